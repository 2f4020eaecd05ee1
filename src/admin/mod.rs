//! Admin operations: systems, keys, invites, devices, gateways, public
//! ports and the audit log, as typed requests ([`Request`]) and typed
//! replies ([`Reply`]). Every front end is a thin adapter:
//!
//! parse ([`AdminCommand`]) → [`AdminCommand::into_request`] →
//! [`check_remote`] (over SSH) → [`run`] → [`commit`] → [`render`].
//!
//! - locally, `warren admin --data DIR …` (`cli/admin.rs`), written straight
//!   into the relay's database (a running relay sees the change);
//! - remotely, `ssh -p 2222 SYSTEM@relay …` with an admin key, run inside
//!   the relay (`relay/commands.rs`, [`Caller::Remote`]).
//!
//! Every change is audited; the audit record is durable before the command
//! reports success.

pub mod access;
pub mod expose;
mod gateway;
mod grammar;
mod live;
pub mod log;
pub mod migrate;
pub mod remote;
mod reply;
mod request;
pub mod status;
pub mod wake;

pub use access::TokenRequest;
pub use gateway::{AssociationView, GatewayCommand, GatewayView, ListenView, Which};
pub(crate) use gateway::{parse_cidr, parse_target};
pub(crate) use grammar::invite_ttl;
pub use grammar::{
    AdminArgs, AdminCommand, DeviceCommand, InviteArgs, InviteCommand, KeyCommand, LsArgs,
    SystemCommand,
};
pub use live::{BoxFuture, Change, LiveDevice, LiveRelay, NO_BROKER};
pub use remote::check_remote;
pub use reply::{InviteMade, Outcome, Reply, Text, json_value, render};
pub use request::{ExposeRequest, Format, GatewayRef, GatewayRequest, KeySource, Request};

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::audit::{self, Event, kind};
use crate::protocol::token::Invite;
use crate::protocol::{DeviceId, Name, Role};
use crate::ssh::keys;
use crate::store::datadir::{ADVERTISE_SETTING, host_key_path};
use crate::store::{self, Identity, NewInvite, Store};

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

/// What a command printed, and the audit events it caused: the reply of
/// [`execute`], kept for callers written against it.
#[derive(Debug, Default)]
pub struct Executed {
    pub out: String,
    /// Warnings, for standard error.
    pub err: String,
    pub events: Vec<Event>,
    /// What the command wrote, if anything: a running relay should act now.
    /// Read-only commands leave it `None`.
    pub change: Option<Change>,
}

/// What [`commit`] makes known: audit events and what changed.
pub trait Effects {
    fn events(&self) -> &[Event];
    fn change(&self) -> Option<Change>;
}

impl Effects for Outcome {
    fn events(&self) -> &[Event] {
        &self.events
    }
    fn change(&self) -> Option<Change> {
        self.change
    }
}

impl Effects for Executed {
    fn events(&self) -> &[Event] {
        &self.events
    }
    fn change(&self) -> Option<Change> {
        self.change
    }
}

/// Makes a command's effects known: its audit events are on disk (locally
/// in the store; remotely through the relay's audit writer), and a running
/// relay hears of a write.
pub async fn commit(store: &Store, caller: &Caller<'_>, done: &impl Effects) -> Result<()> {
    let events = done.events().to_vec();
    match caller {
        Caller::Local { .. } => {
            for e in &events {
                e.log();
            }
            store
                .call(move |s| s.append_audit(&events))
                .await
                .context("writing the audit log")?;
        }
        Caller::Remote { live, .. } => {
            live.record_durable(events)
                .await
                .context("done, but writing the audit log failed")?;
            if let Some(change) = done.change() {
                live.changed(change);
            }
        }
    }
    Ok(())
}

/// Runs one command the old way: checked, run and rendered at once
/// ([`AdminCommand::into_request`], [`run`], [`render`]). The caller still
/// [`commit`]s.
pub async fn execute(
    store: &Store,
    caller: &Caller<'_>,
    command: AdminCommand,
) -> Result<Executed> {
    let (request, format) = command.into_request()?;
    let outcome = run(store, caller, request).await?;
    let Text { out, err } = render(&outcome.reply, format)?;
    Ok(Executed {
        out,
        err,
        events: outcome.events,
        change: outcome.change,
    })
}

/// Runs one request against the store (and the live relay, remotely). The
/// events it returns are stamped with the caller; [`commit`] records them.
pub async fn run(store: &Store, caller: &Caller<'_>, request: Request) -> Result<Outcome> {
    let mut outcome = match request {
        Request::HostKey => Outcome::read(Reply::HostKey {
            fingerprint: host_key(caller)?,
        }),
        Request::AddSystem { name } => {
            let n = name.clone();
            store.call(move |s| s.add_system(&n)).await?;
            Outcome {
                events: vec![Event::new(kind::SYSTEM_ADD, audit::OK).system(name.as_str())],
                reply: Reply::SystemAdded {
                    name: name.to_string(),
                },
                change: None,
            }
        }
        Request::ListSystems => Outcome::read(Reply::Systems(store.call(|s| s.systems()).await?)),
        Request::AddKey {
            system,
            role,
            name,
            key,
        } => add_key(store, caller, system, role, name, key).await?,
        Request::ListKeys => Outcome::read(Reply::Keys(store.call(|s| s.keys()).await?)),
        Request::RevokeKey { fingerprint } => {
            let rec = store.call(move |s| s.revoke_key(&fingerprint)).await?;
            Outcome {
                events: vec![key_event(kind::KEY_REVOKE, &rec)],
                reply: Reply::KeyRevoked(rec),
                change: Some(Change::Keys),
            }
        }
        Request::ListDevices { system, labels } => {
            list_devices(store, caller, system, labels).await?
        }
        Request::CreateInvite { .. } => create_invite(store, caller, request).await?,
        Request::ListInvites => Outcome::read(Reply::Invites(store.call(|s| s.invites()).await?)),
        Request::RevokeInvite { id } => {
            let rec = store.call(move |s| s.revoke_invite(&id)).await?;
            let event = Event::new(kind::INVITE_REVOKE, audit::OK)
                .system(rec.system.as_str())
                .detail(format!("invite {} for {} {}", rec.id, rec.role, rec.name));
            Outcome {
                reply: Reply::InviteRevoked(rec),
                events: vec![event],
                change: None,
            }
        }
        Request::SetDisabled { device, disabled } => set_disabled(store, device, disabled).await?,
        Request::SetLabels { device, edit } => set_labels(store, device, edit).await?,
        Request::SetRate {
            system,
            device,
            rate,
        } => set_rate(store, system, device, rate).await?,
        Request::Gateway(g) => store.call(move |s| gateway::run(s, g)).await?,
        Request::Expose(e) => store.call(move |s| expose::run(s, e)).await?,
        Request::Log { query } => read_log(store, caller, query).await?,
        Request::Wake { op, system, device } => Outcome::read(Reply::Woken(
            wake::run(store, caller, op, system, device).await?,
        )),
        Request::ConsoleLogin { .. } | Request::ConsoleLogout | Request::Token(_) => {
            access_request(store, caller, request).await?
        }
    };
    outcome.events = outcome
        .events
        .into_iter()
        .map(|e| caller.stamp(e))
        .collect();
    Ok(outcome)
}

/// `console-login`, `console-logout`, `token`: a local admin asks for every
/// system; a remote key for its own unless it is an admin key.
async fn access_request(store: &Store, caller: &Caller<'_>, request: Request) -> Result<Outcome> {
    let (system, role, who) = match caller {
        Caller::Local { .. } => (None, Role::Admin, "local-admin".to_string()),
        Caller::Remote { who, .. } => (
            (who.role != Role::Admin).then(|| who.system.to_string()),
            who.role,
            who.name.to_string(),
        ),
    };
    store
        .call(move |s| {
            let asker = access::Asker {
                system: system.as_deref(),
                role,
                who: &who,
            };
            access::run(s, &asker, request)
        })
        .await
}

async fn list_devices(
    store: &Store,
    caller: &Caller<'_>,
    system: Option<String>,
    labels: Vec<(String, String)>,
) -> Result<Outcome> {
    let live = match caller {
        Caller::Remote { live, .. } => Some(*live),
        Caller::Local { .. } => None,
    };
    let all_systems = system.is_none();
    let devices = status::list(store, live, system).await?;
    Ok(Outcome::read(Reply::Devices {
        devices: status::filter_labels(devices, &labels),
        all_systems,
    }))
}

async fn read_log(store: &Store, caller: &Caller<'_>, query: store::AuditQuery) -> Result<Outcome> {
    if let Caller::Remote { live, .. } = caller {
        // Whatever happened before this command is in the page.
        live.flush_audit().await?;
    }
    let limit = query.limit;
    let events = store.call(move |s| s.audit(&query)).await?;
    Ok(Outcome::read(Reply::Log { events, limit }))
}

fn host_key(caller: &Caller<'_>) -> Result<String> {
    Ok(match caller {
        Caller::Local { data } => keys::fingerprint(local_host_key(data)?.public_key()).into(),
        Caller::Remote { live, .. } => live.host_key().to_string(),
    })
}

fn key_event(k: &str, rec: &store::KeyRecord) -> Event {
    Event::new(k, audit::OK)
        .system(rec.system.as_str())
        .detail(format!("{} {} {}", rec.role, rec.name, rec.fingerprint))
}

/// `key add`: from a file only on the relay host, where the file is; a key
/// given as text from anywhere an admin may change things.
async fn add_key(
    store: &Store,
    caller: &Caller<'_>,
    system: Name,
    role: Role,
    name: Name,
    source: KeySource,
) -> Result<Outcome> {
    let key = match source {
        KeySource::File(_) if matches!(caller, Caller::Remote { .. }) => bail!(
            "`key add` reads a file on the relay host; remotely, make an invite instead (`invite --system {system} --role {role} --name {name}`)"
        ),
        KeySource::File(path) => read_pubkey(&path)?,
        KeySource::Text(text) => keys::parse_public(&text).context("public key")?,
    };
    let rec = store
        .call(move |s| s.add_key(&system, role, &name, &key))
        .await?;
    Ok(Outcome {
        events: vec![key_event(kind::KEY_ADD, &rec)],
        reply: Reply::KeyAdded(rec),
        change: Some(Change::Keys),
    })
}

/// In a cluster, a token names every relay of the registry (this one
/// first) and pins every relay's host key, comma-separated: the agent
/// moves to the next relay when one fails.
async fn cluster_pins(store: &Store, relay: String, host_key: String) -> Result<(String, String)> {
    if store.postgres().is_none() {
        return Ok((relay, host_key));
    }
    let others = store
        .call(|s| match s.postgres() {
            Some(pg) => pg.relays(),
            None => Ok(Vec::new()),
        })
        .await?;
    let (mut relays, mut keys) = (vec![relay], vec![host_key]);
    for r in others {
        if let Some(a) = r.address
            && !relays.contains(&a)
        {
            relays.push(a);
        }
        if !keys.contains(&r.host_key) {
            keys.push(r.host_key);
        }
    }
    Ok((relays.join(","), keys.join(",")))
}

/// The address this relay advertises (`--advertise`): in a cluster its own
/// registry row (the relay's id is its host key's fingerprint), so each
/// relay's invites name itself first; on one relay, the stored setting.
async fn advertised(store: &Store, host_key: &str) -> Result<Option<String>> {
    if store.postgres().is_none() {
        return store.call(|s| s.setting(ADVERTISE_SETTING)).await;
    }
    let id = host_key.to_string();
    let relays = store
        .call(|s| match s.postgres() {
            Some(pg) => pg.relays(),
            None => Ok(Vec::new()),
        })
        .await?;
    Ok(relays
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| r.address))
}

async fn create_invite(store: &Store, caller: &Caller<'_>, request: Request) -> Result<Outcome> {
    let Request::CreateInvite {
        system,
        role,
        name,
        ttl,
        relay,
    } = request
    else {
        bail!("not an invite request");
    };
    let host_key = host_key(caller)?;
    let relay = match relay {
        Some(r) => r,
        None => {
            let Some(r) = advertised(store, &host_key).await? else {
                bail!(
                    "no relay address for the token: pass --relay HOST:PORT, or start the relay with --advertise HOST:PORT"
                );
            };
            crate::protocol::RelayAddress::parse(&r)?.into_string()
        }
    };
    let (relay, host_key) = cluster_pins(store, relay, host_key).await?;
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
    let event = Event::new(kind::INVITE_CREATE, audit::OK)
        .system(invite.system.as_str())
        .detail(format!(
            "invite {} for {} {}, expires in {}",
            invite.id,
            invite.role,
            invite.name,
            humantime::format_duration(ttl)
        ));
    Ok(Outcome {
        reply: Reply::InviteMade(InviteMade {
            token: invite.encode(),
            id: invite.id,
            system: invite.system.to_string(),
            role: invite.role,
            name: invite.name.to_string(),
            relay: invite.relay,
            expires: invite.expires,
        }),
        events: vec![event],
        change: None,
    })
}

async fn set_disabled(store: &Store, device: DeviceId, disabled: bool) -> Result<Outcome> {
    let d = device.clone();
    store
        .call(move |s| s.set_device_disabled(&d.system, &d.name, disabled))
        .await?;
    let k = if disabled {
        kind::DEVICE_DISABLE
    } else {
        kind::DEVICE_ENABLE
    };
    Ok(Outcome {
        events: vec![
            Event::new(k, audit::OK)
                .system(device.system.as_str())
                .device(device.name.as_str()),
        ],
        reply: Reply::Disabled {
            system: device.system.to_string(),
            device: device.name.to_string(),
            disabled,
        },
        change: Some(Change::Devices),
    })
}

/// `device label`: the device's admin labels after the change are the reply.
async fn set_labels(
    store: &Store,
    device: DeviceId,
    edit: store::labels::LabelEdit,
) -> Result<Outcome> {
    let (d, e) = (device.clone(), edit.clone());
    let rows = store
        .call(move |s| s.set_labels(&d.system, &d.name, &e))
        .await?;
    let mut what: Vec<String> = edit.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    what.extend(edit.remove.iter().map(|k| format!("-{k}")));
    what.extend(edit.reset.iter().map(|k| format!("reset {k}")));
    let (mut labels, mut hidden) = (std::collections::BTreeMap::new(), Vec::new());
    for r in rows {
        match r.value {
            Some(v) => {
                labels.insert(r.key, v);
            }
            None => hidden.push(r.key),
        }
    }
    Ok(Outcome {
        events: vec![
            Event::new(kind::LABELS_SET, audit::OK)
                .system(device.system.as_str())
                .device(device.name.as_str())
                .detail(what.join(" ")),
        ],
        reply: Reply::LabelsSet {
            system: device.system.to_string(),
            device: device.name.to_string(),
            labels,
            hidden,
        },
        change: None,
    })
}

async fn set_rate(
    store: &Store,
    system: Name,
    device: Option<Name>,
    rate: Option<crate::protocol::rate::Rate>,
) -> Result<Outcome> {
    let (s, d) = (system.clone(), device.clone());
    store
        .call(move |st| st.set_rate(&s, d.as_ref(), rate))
        .await?;
    let mut event = Event::new(kind::RATE_SET, audit::OK)
        .system(system.as_str())
        .detail(match rate {
            Some(r) => format!("limit {r}"),
            None => "limit cleared".to_string(),
        });
    if let Some(d) = &device {
        event = event.device(d.as_str());
    }
    Ok(Outcome {
        events: vec![event],
        reply: Reply::RateSet {
            system: system.to_string(),
            device: device.map(|d| d.to_string()),
            rate,
        },
        change: Some(Change::Rates),
    })
}

/// The relay's host key in `data`. Only the relay makes one: a fingerprint
/// printed for a mistyped `--data` would be pinned by agents and never match.
pub fn local_host_key(data: &Path) -> Result<keys::PrivateKey> {
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
