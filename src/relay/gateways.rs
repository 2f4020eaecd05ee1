//! Gateways at the relay: what each online gateway serves, routing a host
//! that is not a device name to the right gateway, the announcements and
//! association pushes, and which targets a gateway's listen forwards may
//! reach.
//!
//! The live map is keyed by (system, name) and tagged with the connection
//! that announced it; an entry counts only while the registry shows the same
//! connection holding that device name, so a stale entry can never route.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::Relay;
use super::registry::ConnId;
use crate::protocol::cidr::{VIA, split_via};
use crate::protocol::gateway::{
    self, ANNOUNCE_COMMAND, Announce, Associations, CONTROL_ADDRESS, GatewayScope,
    MAX_CONTROL_MESSAGE, Pick,
};
use crate::protocol::{Cidr, DeviceId, Name, Role, Target};
use crate::ssh::server::{ExecOutput, ServerHandle};
use crate::ssh::{Refusal, SpliceStats};
use crate::store::{self, Identity};

#[derive(Default)]
pub struct Gateways {
    inner: Mutex<HashMap<DeviceId, Live>>,
    /// Numbers every association list sent (see [`Associations::seq`]).
    seq: AtomicU64,
}

#[derive(Clone)]
struct Live {
    conn: ConnId,
    scope: GatewayScope,
}

/// Where a stream goes: the connection, and the address to put in the
/// `forwarded-tcpip` open (the device's name, or the real target host).
pub struct Routed {
    pub handle: ServerHandle,
    pub address: String,
    /// The gateway that carries it, for messages.
    pub gateway: Name,
}

impl Gateways {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, Live>> {
        // Plain inserts and removes: a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn set(&self, device: DeviceId, conn: ConnId, scope: GatewayScope) {
        self.lock().insert(device, Live { conn, scope });
    }

    /// Forgets the gateways announced on a closed connection.
    pub fn remove_conn(&self, conn: ConnId) {
        self.lock().retain(|_, live| live.conn != conn);
    }

    /// Live gateways of one system (unchecked against the registry).
    fn of_system(&self, system: &Name) -> Vec<(Name, Live)> {
        self.lock()
            .iter()
            .filter(|(id, _)| id.system == *system)
            .map(|(id, l)| (id.name.clone(), l.clone()))
            .collect()
    }

    /// The live scope of one gateway, if it announced one.
    pub fn scope(&self, device: &DeviceId) -> Option<GatewayScope> {
        self.lock().get(device).map(|l| l.scope.clone())
    }
}

/// The gateways of `system` that are online on the connection that
/// announced them, with their connection handles.
fn online(relay: &Relay, system: &Name) -> Vec<(Name, GatewayScope, ServerHandle)> {
    let mut out = Vec::new();
    for (name, live) in relay.gateways.of_system(system) {
        if let Some(dev) = relay.registry.lookup(system, &name)
            && dev.conn == live.conn
            && live.scope.is_gateway()
        {
            out.push((name, live.scope, dev.handle));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Routes `host:port`, which is not an online device, through a gateway
/// when it names one (`HOST.via.GATEWAY`) or is an address. `None`: neither.
pub(super) fn route(
    relay: &Relay,
    system: &Name,
    host: &str,
    port: u32,
) -> Option<Result<Routed, Refusal>> {
    let port16 = u16::try_from(port).ok().filter(|p| *p != 0);
    if let Some((inner, gw)) = split_via(host) {
        return Some(via(relay, system, inner, gw, port16));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(by_address(relay, system, ip, port16));
    }
    None
}

/// A name that is no device, online or not: a host inside the network of
/// the system's only gateway. With several, the relay cannot know whose
/// network resolves it, so the controller names the gateway (`None`).
pub(super) fn route_name(
    relay: &Relay,
    system: &Name,
    host: &str,
    port: u32,
) -> Option<Result<Routed, Refusal>> {
    let port16 = u16::try_from(port).ok().filter(|p| *p != 0);
    let gateways = online(relay, system);
    if let [(name, scope, handle)] = gateways.as_slice() {
        return Some(match port16.filter(|p| scope.ports.contains(p)) {
            Some(_) => Ok(Routed {
                handle: handle.clone(),
                address: host.to_string(),
                gateway: name.clone(),
            }),
            None => Err(port_refusal(name, scope, port)),
        });
    }
    None
}

/// For a name that is no device: how to reach it through a gateway, when
/// the system has several (with one, it would have gone there).
pub(super) fn hint(relay: &Relay, system: &Name, host: &str) -> String {
    let names: Vec<String> = online(relay, system)
        .into_iter()
        .map(|(n, _, _)| n.to_string())
        .collect();
    match names.first() {
        Some(first) if names.len() > 1 => format!(
            "; for a host behind a gateway, name the gateway: {host}{VIA}{first} (gateways: {})",
            names.join(", ")
        ),
        _ => String::new(),
    }
}

fn port_refusal(name: &Name, scope: &GatewayScope, port: u32) -> Refusal {
    let ports: Vec<String> = scope.ports.iter().map(u16::to_string).collect();
    Refusal::prohibited(format!(
        "gateway {name} serves port{} {} on its networks, not {port}",
        if ports.len() == 1 { "" } else { "s" },
        ports.join(", ")
    ))
}

/// `HOST.via.GATEWAY`: the controller named the gateway.
fn via(
    relay: &Relay,
    system: &Name,
    inner: &str,
    gw: &str,
    port: Option<u16>,
) -> Result<Routed, Refusal> {
    let name = Name::parse(gw).map_err(|e| {
        Refusal::prohibited(format!("{gw:?} after {VIA:?} is no gateway name: {e}"))
    })?;
    let Some((name, scope, handle)) = online(relay, system)
        .into_iter()
        .find(|(n, _, _)| *n == name)
    else {
        let why = match relay.registry.lookup(system, &name) {
            Some(_) => "is online but is not a gateway (its agent has no scope)",
            None => "is not online",
        };
        return Err(Refusal::prohibited(format!(
            "gateway {name} of system {system} {why}"
        )));
    };
    let Some(port) = port else {
        return Err(port_refusal(&name, &scope, 0));
    };
    match inner.parse::<IpAddr>() {
        Ok(ip) => scope
            .check(name.as_str(), ip, port)
            .map_err(Refusal::prohibited)?,
        // A name inside the network: the gateway resolves it and checks the
        // address against its scope.
        Err(_) if scope.ports.contains(&port) => {}
        Err(_) => return Err(port_refusal(&name, &scope, u32::from(port))),
    }
    Ok(Routed {
        handle,
        address: inner.to_string(),
        gateway: name,
    })
}

/// An address: the gateway whose networks hold it most specifically.
fn by_address(
    relay: &Relay,
    system: &Name,
    ip: IpAddr,
    port: Option<u16>,
) -> Result<Routed, Refusal> {
    let gateways = online(relay, system);
    let picked = gateway::pick(gateways.iter().map(|(n, s, _)| (n, s)), ip);
    let (name, _) = picked.map_err(|p| match p {
        Pick::None if gateways.is_empty() => Refusal::prohibited(format!(
            "no gateway of system {system} is online to reach {ip}"
        )),
        Pick::None => {
            // An admin may have associated it with a gateway whose owner
            // does not permit it: say so rather than "no gateway".
            let refused = gateways.iter().find_map(|(n, s, _)| {
                s.refused_associations()
                    .into_iter()
                    .find(|c| c.contains(ip))
                    .map(|c| (n, c))
            });
            if let Some((n, c)) = refused {
                return Refusal::prohibited(format!(
                    "{ip} is in network {c}, associated with gateway {n} but outside its permit"
                ));
            }
            let served: Vec<String> = gateways
                .iter()
                .map(|(n, s, _)| format!("{n}: {}", gateway::list(&s.effective())))
                .collect();
            Refusal::prohibited(format!(
                "{ip} is outside the scope of every gateway of system {system} ({})",
                served.join("; ")
            ))
        }
        Pick::Ambiguous(all) => {
            let names: Vec<String> = all.iter().map(|(n, c)| format!("{n} ({c})")).collect();
            Refusal::prohibited(format!(
                "{ip} is ambiguous: it is in the scope of gateways {}; name one, e.g. {ip}{VIA}{}",
                names.join(" and "),
                all[0].0
            ))
        }
    })?;
    let Some((name, scope, handle)) = gateways.into_iter().find(|(n, _, _)| *n == name) else {
        return Err(Refusal::prohibited(format!("gateway {name} went offline")));
    };
    scope
        .check(name.as_str(), ip, port.unwrap_or(0))
        .map_err(Refusal::prohibited)?;
    Ok(Routed {
        handle,
        address: ip.to_string(),
        gateway: name,
    })
}

/// Whether a device key may open `host:port`: only a gateway, only to a
/// target an admin allowed for it (its listen forwards).
pub(super) async fn may_open(
    relay: &Relay,
    who: &Identity,
    host: &str,
    port: u32,
) -> Result<(), Refusal> {
    if who.role != Role::Device {
        return crate::policy::may_open_streams(who).map_err(Refusal::prohibited);
    }
    let target = match u16::try_from(port) {
        Ok(p) => Target {
            host: host.to_string(),
            port: p,
        }
        .to_string(),
        Err(_) => return Err(Refusal::prohibited(format!("{port} is not a port"))),
    };
    let (s, n, t) = (who.system.to_string(), who.name.to_string(), target.clone());
    let allowed = relay
        .store
        .call(move |st| st.gateway_rule_allows(&s, &n, &t))
        .await
        .unwrap_or(false);
    if allowed {
        return Ok(());
    }
    Err(Refusal::prohibited(format!(
        "device keys cannot open streams, except to targets a gateway rule allows; none allows {} to reach {target} (an admin adds one with `warren admin gateway allow {} {target}`)",
        who.name, who.name
    )))
}

/// Commands a device key may run: `gateway-announce JSON` and `time`.
pub(super) async fn device_command(
    relay: &Relay,
    who: &Identity,
    conn: ConnId,
    command: &str,
) -> ExecOutput {
    let command = command.trim();
    if command == "time" {
        return ExecOutput::ok(format!("{}\n", store::now()));
    }
    let Some(json) = command
        .strip_prefix(ANNOUNCE_COMMAND)
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    else {
        return ExecOutput::fail(
            2,
            format!(
                "device keys may run only `{ANNOUNCE_COMMAND} JSON` and `time` here, not {:?}\n",
                command.chars().take(80).collect::<String>()
            ),
        );
    };
    if json.len() > MAX_CONTROL_MESSAGE {
        return ExecOutput::fail(
            1,
            format!("announcement longer than {MAX_CONTROL_MESSAGE} bytes\n"),
        );
    }
    let announce: Announce = match serde_json::from_str(json.trim()) {
        Ok(a) => a,
        Err(e) => return ExecOutput::fail(1, format!("malformed gateway announcement: {e}\n")),
    };
    if announce.ports.is_empty() || announce.ports.contains(&0) {
        return ExecOutput::fail(1, "a gateway must serve ports from 1 to 65535\n");
    }
    let (s, n, a) = (
        who.system.to_string(),
        who.name.to_string(),
        announce.clone(),
    );
    let associations = match relay
        .store
        .call(move |st| st.gateway_announce(&s, &n, &a))
        .await
    {
        Ok(a) => a,
        Err(e) => return ExecOutput::fail(1, format!("cannot record the gateway: {e:#}\n")),
    };
    let scope = GatewayScope {
        scope: announce.scope,
        ports: announce.ports,
        permit: announce.permit,
        associations: associations.clone(),
    };
    tracing::info!(
        target: "audit",
        event = "gateway_up",
        system = who.system.as_str(),
        name = who.name.as_str(),
        scope = %gateway::list(&scope.scope),
        associations = %gateway::list(&scope.effective()),
    );
    let seq = relay.gateways.next_seq();
    relay.gateways.set(
        DeviceId::new(who.system.clone(), who.name.clone()),
        conn,
        scope,
    );
    // An admin change committed between our read and `set` was missed by
    // the store watcher (it found no entry to update): read again, and push
    // if it differs. The push carries a later `seq`, so it wins at the agent
    // whichever arrives first.
    let (s, n) = (who.system.to_string(), who.name.to_string());
    if let Ok(now) = relay
        .store
        .call(move |st| st.gateway_associations(&s, &n))
        .await
        && now != associations
    {
        update(
            relay,
            vec![(DeviceId::new(who.system.clone(), who.name.clone()), now)],
        );
    }
    match serde_json::to_string(&Associations { associations, seq }) {
        Ok(s) => ExecOutput::ok(s),
        Err(e) => ExecOutput::fail(1, format!("{e}\n")),
    }
}

/// After the store changed: reloads associations and pushes them to every
/// online gateway whose list changed. Routing uses the new list from the
/// moment it is loaded; the push follows at once.
pub(super) async fn refresh(relay: &Relay) {
    let Ok(all) = relay.store.call(|s| s.all_gateway_associations()).await else {
        return;
    };
    let changed: Vec<(DeviceId, Vec<Cidr>)> = relay
        .gateways
        .lock()
        .iter()
        .filter_map(|(id, live)| {
            let key = (id.system.to_string(), id.name.to_string());
            let now = all.get(&key).cloned().unwrap_or_default();
            (now != live.scope.associations).then(|| (id.clone(), now))
        })
        .collect();
    update(relay, changed);
}

/// Routes by the new lists from now on, then pushes each to its gateway,
/// numbered in the order of the changes.
fn update(relay: &Relay, changed: Vec<(DeviceId, Vec<Cidr>)>) {
    let mut pushes = Vec::new();
    {
        let mut map = relay.gateways.lock();
        for (id, nets) in changed {
            if let Some(live) = map.get_mut(&id) {
                live.scope.associations = nets.clone();
                pushes.push((id, nets, relay.gateways.next_seq()));
            }
        }
    }
    for (id, nets, seq) in pushes {
        let Some(dev) = relay.registry.lookup(&id.system, &id.name) else {
            continue;
        };
        tracing::info!(
            target: "audit",
            event = "gateway_associations",
            system = id.system.as_str(),
            name = id.name.as_str(),
            associations = %gateway::list(&nets),
        );
        tokio::spawn(push(dev.handle, nets, seq));
    }
}

/// Writes the association list on a control channel to the gateway.
async fn push(handle: ServerHandle, nets: Vec<Cidr>, seq: u64) -> Option<SpliceStats> {
    let body = serde_json::to_vec(&Associations {
        associations: nets,
        seq,
    })
    .ok()?;
    let origin = SocketAddr::from(([127, 0, 0, 1], 0));
    let ch = match handle.open_forwarded(CONTROL_ADDRESS, 0, origin).await {
        Ok(ch) => ch,
        Err(e) => {
            tracing::warn!(error = %e, "could not push associations to a gateway");
            return None;
        }
    };
    Some(
        ch.splice_io(std::io::Cursor::new(body), tokio::io::sink())
            .await,
    )
}
