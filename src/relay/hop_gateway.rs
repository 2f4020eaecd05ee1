//! Gateways across relays of a cluster: a controller on relay A reaches a
//! host behind a gateway connected to relay B (`HOST.via.GW`, an address in
//! its networks, or the system's only gateway by name).
//!
//! On A, [`route`] runs the router again over a [`ClusterView`]: A's own
//! devices and gateways, plus the gateways that other live relays hold, with
//! the scope, ports, permit and associations they announced (the store's
//! gateway rows). A applies policy and audits as always, then opens one hop
//! to B naming the typed route (`HopTarget::Gateway`: gateway, host, the
//! asking key; the port is the channel's).
//!
//! On B, [`serve`] checks again with B's own policy: the key must still be
//! active, B's router must route the same host and port for it, and only
//! through that gateway, connected to B itself. B never hops further.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Relay;
use super::router::{self, Route, RouteView};
use crate::policy::Refusal;
use crate::protocol::gateway::GatewayScope;
use crate::protocol::limits::STREAM_OPEN_TIMEOUT;
use crate::protocol::{Cidr, DeviceId, Name, Target};
use crate::ssh::{Fingerprint, IncomingChannel};
use crate::store::postgres::RelayRecord;
use crate::store::{GatewayRecord, Identity};

/// Who carries a stream: a connection to this relay (which the relay's own
/// routing found first), or another relay.
#[derive(Clone)]
pub(super) enum Carrier {
    Local,
    Remote(RelayRecord),
}

/// This relay's view, widened by the gateways other relays hold.
struct ClusterView<'a> {
    relay: &'a Relay,
    remote: Vec<(Name, GatewayScope, RelayRecord)>,
}

impl RouteView for ClusterView<'_> {
    type Handle = Carrier;

    fn online(&self, device: &DeviceId) -> Option<(BTreeSet<u32>, Carrier)> {
        RouteView::online(self.relay, device).map(|(ports, _)| (ports, Carrier::Local))
    }

    fn gateways(&self, system: &Name) -> Vec<(Name, GatewayScope, Carrier)> {
        let mut out: Vec<(Name, GatewayScope, Carrier)> = RouteView::gateways(self.relay, system)
            .into_iter()
            .map(|(n, s, _)| (n, s, Carrier::Local))
            .collect();
        for (n, s, r) in &self.remote {
            if !out.iter().any(|(m, _, _)| m == n) {
                out.push((n.clone(), s.clone(), Carrier::Remote(r.clone())));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn rule_allows(&self, who: &Identity, target: &Target) -> impl Future<Output = bool> + Send {
        RouteView::rule_allows(self.relay, who, target)
    }

    fn last_seen(&self, device: &DeviceId) -> impl Future<Output = Option<Option<u64>>> + Send {
        RouteView::last_seen(self.relay, device)
    }
}

/// Whether a refusal on this relay alone may be a route through a gateway
/// held by another relay.
pub(super) fn maybe_elsewhere(r: &Refusal) -> bool {
    matches!(
        r,
        Refusal::GatewayOffline { .. }
            | Refusal::NoGatewayOnline { .. }
            | Refusal::OutsideEveryScope { .. }
            | Refusal::NoDevice { .. }
    )
}

/// The scope a gateway announced, as the store keeps it.
fn scope_of(g: &GatewayRecord) -> Option<GatewayScope> {
    let cidrs = |list: &[String]| -> Option<Vec<Cidr>> {
        list.iter().map(|c| Cidr::parse(c).ok()).collect()
    };
    Some(GatewayScope {
        scope: cidrs(&g.scope)?,
        ports: g.ports.clone(),
        permit: match &g.permit {
            Some(p) => Some(cidrs(p)?),
            None => None,
        },
        associations: cidrs(&g.associations)?,
    })
}

/// The gateways of `system` that other live relays of the cluster hold.
async fn remote_gateways(relay: &Relay, system: &Name) -> Vec<(Name, GatewayScope, RelayRecord)> {
    let s = system.to_string();
    let found = relay
        .store
        .call(move |st| {
            let Some(pg) = st.postgres() else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for g in pg.gateways(Some(&s))? {
                if let Some(holder) = pg.held_by_other(&s, &g.name)? {
                    out.push((g, holder));
                }
            }
            Ok(out)
        })
        .await;
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "reading the cluster's gateways");
            return Vec::new();
        }
    };
    found
        .into_iter()
        .filter_map(|(g, holder)| {
            let scope = scope_of(&g).filter(GatewayScope::is_gateway)?;
            Some((Name::parse(&g.name).ok()?, scope, holder))
        })
        .collect()
}

/// Routes `host:port` for `who` over the whole cluster's gateways; `None`
/// when this relay is in no cluster or no other relay holds a gateway of
/// the system.
pub(super) async fn route(
    relay: &Relay,
    who: &Identity,
    host: &str,
    port: u32,
) -> Option<Result<Route<Carrier>, Refusal>> {
    relay.store.postgres()?;
    let remote = remote_gateways(relay, &who.system).await;
    if remote.is_empty() {
        return None;
    }
    let view = ClusterView { relay, remote };
    Some(router::route(&view, who, host, port).await)
}

/// A typed route a peer relay asked this relay to carry.
pub(super) struct Asked {
    pub gateway: DeviceId,
    pub host: String,
    /// The fingerprint of the key that asked on the other relay.
    pub key: Fingerprint,
    pub port: u32,
}

/// Serves a hop to a host behind `asked.gateway`, after this relay's own
/// checks (see the module doc).
pub(super) async fn serve(
    relay: Arc<Relay>,
    from: String,
    asked: Asked,
    peer: SocketAddr,
    channel: IncomingChannel,
) {
    let route = match checked(&relay, &asked).await {
        Ok(r) => r,
        Err(refusal) => return channel.refuse(&refusal).await,
    };
    let Some(guard) = relay.registry.open_stream(route.carrier()) else {
        let device = route.carrier().name.clone();
        return channel
            .refuse(&Refusal::Disabled { device }.to_wire())
            .await;
    };
    let max_packet = channel.peer_max_packet();
    let opened = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        route
            .handle()
            .open_forwarded_for(&route.address(), asked.port, peer, max_packet),
    )
    .await;
    let device_channel = match opened {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => {
            let r = Refusal::OpenFailed {
                via: route.via(),
                port: asked.port,
                err: e.to_string(),
            };
            return channel.refuse(&r.to_wire()).await;
        }
        Err(_) => {
            let r = Refusal::OpenTimeout { via: route.via() };
            return channel.refuse(&r.to_wire()).await;
        }
    };
    tracing::debug!(%from, gateway = %asked.gateway.name, host = %asked.host, port = asked.port, "hop stream through a gateway open");
    let incoming = channel.accept().await;
    incoming
        .splice_until(device_channel, guard.closed.cancelled())
        .await;
}

/// This relay's own checks of a typed route: who asked (still active), the
/// route its router finds for them, and that the route is that gateway's.
async fn checked(relay: &Arc<Relay>, asked: &Asked) -> Result<Route, crate::ssh::Refusal> {
    use crate::ssh::Refusal as Wire;
    let (s, k) = (asked.gateway.system.to_string(), asked.key.clone());
    let who = relay
        .store
        .call(move |st| match st.postgres() {
            Some(pg) => pg.identity_by_fingerprint(&s, &k),
            None => Ok(None),
        })
        .await
        .map_err(|e| Wire::connect_failed(format!("cannot check the key now: {e:#}")))?;
    let Some(who) = who else {
        return Err(Wire::prohibited(format!(
            "key {} is no active key of system {}",
            asked.key, asked.gateway.system
        )));
    };
    let route = router::route(relay.as_ref(), &who, &asked.host, asked.port)
        .await
        .map_err(|r| r.to_wire())?;
    if matches!(route, Route::Device { .. }) || route.carrier() != &asked.gateway {
        return Err(Wire::connect_failed(format!(
            "gateway {} on this relay does not route {}:{}",
            asked.gateway.name, asked.host, asked.port
        )));
    }
    Ok(route)
}
