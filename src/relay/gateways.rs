//! Gateways at the relay: what each online gateway serves, the
//! announcements and association pushes. Routing a host to the right
//! gateway, and which targets a gateway's listen forwards may reach, is in
//! `router.rs`.
//!
//! The live map is keyed by (system, name) and tagged with the connection
//! that announced it; an entry counts only while the registry shows the same
//! connection holding that device name, so a stale entry can never route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::Relay;
use super::registry::ConnId;
use crate::protocol::gateway::{
    self, ANNOUNCE_COMMAND, Announce, Associations, CONTROL_ADDRESS, GatewayScope,
    MAX_CONTROL_MESSAGE,
};
use crate::protocol::{Cidr, DeviceId, Name};
use crate::ssh::SpliceStats;
use crate::ssh::server::{ExecOutput, ServerHandle};
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

    /// Live gateways of one system, with the connection that announced
    /// each (unchecked against the registry).
    pub(super) fn of_system(&self, system: &Name) -> Vec<(Name, ConnId, GatewayScope)> {
        self.lock()
            .iter()
            .filter(|(id, _)| id.system == *system)
            .map(|(id, l)| (id.name.clone(), l.conn, l.scope.clone()))
            .collect()
    }

    /// The live scope of one gateway, if it announced one.
    pub fn scope(&self, device: &DeviceId) -> Option<GatewayScope> {
        self.lock().get(device).map(|l| l.scope.clone())
    }
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
    match parse_announce(command) {
        Ok(announce) => gateway_up(relay, who, conn, announce).await,
        Err(refused) => refused,
    }
}

/// `gateway-announce JSON`, checked; `Err`: the answer to give instead.
fn parse_announce(command: &str) -> Result<Announce, ExecOutput> {
    let Some(json) = command
        .strip_prefix(ANNOUNCE_COMMAND)
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    else {
        return Err(ExecOutput::fail(
            2,
            format!(
                "device keys may run only `{ANNOUNCE_COMMAND} JSON` and `time` here, not {:?}\n",
                command.chars().take(80).collect::<String>()
            ),
        ));
    };
    if json.len() > MAX_CONTROL_MESSAGE {
        return Err(ExecOutput::fail(
            1,
            format!("announcement longer than {MAX_CONTROL_MESSAGE} bytes\n"),
        ));
    }
    let announce: Announce = serde_json::from_str(json.trim())
        .map_err(|e| ExecOutput::fail(1, format!("malformed gateway announcement: {e}\n")))?;
    if announce.ports.is_empty() || announce.ports.contains(&0) {
        return Err(ExecOutput::fail(
            1,
            "a gateway must serve ports from 1 to 65535\n",
        ));
    }
    Ok(announce)
}

/// Records an announced gateway, makes it live on this connection and
/// answers with its associations.
async fn gateway_up(relay: &Relay, who: &Identity, conn: ConnId, announce: Announce) -> ExecOutput {
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
        relay.spawn(async move {
            push(dev.handle, nets, seq).await;
        });
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
