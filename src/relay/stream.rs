//! One controller stream (`direct-tcpip`): route it, hold a place in the
//! registry's stream count, open the channel to the device, audit, splice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::Relay;
use super::hop::HopTarget;
use super::hop_gateway::{self, Carrier};
use super::router::Route;
use crate::audit::{self, Event, kind};
use crate::policy::{Refusal, Via};
use crate::protocol::DeviceId;
use crate::protocol::limits::STREAM_OPEN_TIMEOUT;
use crate::ssh::IncomingChannel;
use crate::ssh::server::ServerHandle;
use crate::ssh::{Channel, SpliceStats};
use crate::store::Identity;
use crate::store::postgres::RelayRecord;

/// One stream's fixed facts, for its audit lines.
struct Request {
    relay: Arc<Relay>,
    who: Identity,
    host: String,
    port: u32,
    peer: SocketAddr,
}

impl Request {
    fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn event(&self, outcome: &str, device: &str) -> Event {
        Event::new(kind::STREAM_OPEN, outcome)
            .peer(self.peer)
            .system(self.who.system.as_str())
            .key(self.who.name.as_str(), self.who.fingerprint.as_str())
            .device(device)
            .target(self.target())
    }

    /// Audits a refusal and sends it to the controller.
    async fn refuse(&self, channel: IncomingChannel, refusal: Refusal) {
        self.relay.audit.record(
            self.event(audit::REFUSED, &self.host)
                .detail(refusal.to_string())
                .reason(refusal.code()),
        );
        channel.refuse(&refusal.to_wire()).await;
    }
}

/// Routes one controller stream to its device and splices the two.
pub(super) async fn stream(
    relay: Arc<Relay>,
    who: Identity,
    host: String,
    port: u32,
    peer: SocketAddr,
    channel: IncomingChannel,
) {
    let req = Request {
        relay,
        who,
        host,
        port,
        peer,
    };
    let asked = Instant::now();
    if let Some((device, peer)) = held_elsewhere(&req) {
        crate::metrics::global().hop_phase("lookup", asked.elapsed());
        let via = Via::Device {
            host: req.host.clone(),
        };
        return hop(req, peer, HopTarget::Device(device), via, channel).await;
    }
    let route = match super::wake::route_waking(&req.relay, &req.who, &req.host, port).await {
        Ok(r) => r,
        Err(r @ Refusal::Offline { .. }) => {
            // Offline here: in a cluster, another relay may hold it.
            match super::hop::holder(&req.relay, &req.who.system, &req.host).await {
                Some(peer) => {
                    crate::metrics::global().hop_phase("lookup", asked.elapsed());
                    let Ok(name) = crate::protocol::Name::parse(&req.host) else {
                        return req.refuse(channel, r).await;
                    };
                    let device = DeviceId::new(req.who.system.clone(), name);
                    let via = Via::Device {
                        host: req.host.clone(),
                    };
                    return hop(req, peer, HopTarget::Device(device), via, channel).await;
                }
                None => return req.refuse(channel, r).await,
            }
        }
        Err(r) if hop_gateway::maybe_elsewhere(&r) => return elsewhere(req, r, channel).await,
        Err(r) => return req.refuse(channel, r).await,
    };
    let relay = req.relay.clone();
    let Some(guard) = relay.registry.open_stream(route.carrier()) else {
        let device = route.carrier().name.clone();
        return req.refuse(channel, Refusal::Disabled { device }).await;
    };
    let max_packet = channel.peer_max_packet();
    let device_channel = match open(&req, &route, max_packet).await {
        Ok(ch) => ch,
        Err(r) => return req.refuse(channel, r).await,
    };
    let started = Instant::now();
    crate::metrics::global().stream_setup(started - asked);
    let controller_channel = channel.accept().await;
    let name = route.carrier().name.as_str();
    tracing::debug!(target = %req.target(), "stream open");
    relay
        .audit
        .record(req.event(audit::OK, name).detail("path=relayed"));
    // A device that opens a stream (a gateway's listen forward) is paced too.
    let shaper = match req.who.role {
        crate::protocol::Role::Device => relay.bandwidth.shaper_from(
            route.carrier(),
            &DeviceId::new(req.who.system.clone(), req.who.name.clone()),
        ),
        _ => relay.bandwidth.shaper(route.carrier()),
    };
    let stats = controller_channel
        .splice_shaped(device_channel, guard.closed.cancelled(), Arc::new(shaper))
        .await;
    let disabled = guard.closed.is_cancelled();
    drop(guard);
    closed(&req, name, stats, started, disabled);
}

/// A device another relay holds, by the claims this relay received: for a
/// key that may open streams, naming a device that is not connected here.
/// The stream goes straight to the hop, without a store call (its first
/// byte waits on no query).
/// What the route would find too (an offline device held elsewhere is a
/// hop), without reading the store; `None`: route as usual.
fn held_elsewhere(req: &Request) -> Option<(DeviceId, RelayRecord)> {
    if req.who.role == crate::protocol::Role::Device
        || crate::policy::may_open_streams(&req.who).is_err()
    {
        return None;
    }
    let name = crate::protocol::Name::parse(&req.host).ok()?;
    let device = DeviceId::new(req.who.system.clone(), name);
    if req
        .relay
        .registry
        .lookup(&device.system, &device.name)
        .is_some()
    {
        return None;
    }
    let pg = req.relay.store.postgres()?;
    let peer = pg.holder_known(device.system.as_str(), device.name.as_str())??;
    Some((device, peer))
}

/// A route refused here that a gateway on another relay of the cluster may
/// carry: routed again over the cluster's gateways, then one hop.
async fn elsewhere(req: Request, refused: Refusal, channel: IncomingChannel) {
    let route = match hop_gateway::route(&req.relay, &req.who, &req.host, req.port).await {
        Some(Ok(route)) => route,
        Some(Err(r)) => return req.refuse(channel, r).await,
        None => return req.refuse(channel, refused).await,
    };
    let Carrier::Remote(peer) = route.handle().clone() else {
        // A gateway of this relay came online meanwhile: refuse as first found.
        return req.refuse(channel, refused).await;
    };
    let target = HopTarget::Gateway {
        gateway: route.carrier().clone(),
        host: req.host.clone(),
        key: req.who.fingerprint.clone(),
    };
    let via = route.via();
    hop(req, peer, target, via, channel).await
}

/// Carries the stream through `peer`, the relay of the cluster that holds
/// the device or gateway (policy was applied here; `peer` checks again
/// only for gateways, and hands the stream on).
async fn hop(
    req: Request,
    peer: RelayRecord,
    target: HopTarget,
    via: Via,
    channel: IncomingChannel,
) {
    let carrier = match &target {
        HopTarget::Device(d) => d.name.to_string(),
        HopTarget::Gateway { gateway, .. } => gateway.name.to_string(),
    };
    let (opened, peer) = super::hop::open_following(&req.relay, peer, &target, req.port).await;
    let device_channel = match opened {
        Ok(ch) => ch,
        Err(e) => {
            let refusal = Refusal::OpenFailed {
                via,
                port: req.port,
                err: format!("{e:#} (through relay {})", peer.id),
            };
            return req.refuse(channel, refusal).await;
        }
    };
    let started = Instant::now();
    let controller_channel = channel.accept().await;
    req.relay.audit.record(
        req.event(audit::OK, &carrier)
            .detail(format!("through relay {}", peer.id)),
    );
    let stats = controller_channel.splice(device_channel).await;
    closed(&req, &carrier, stats, started, false);
}

/// Asks the carrier to open the stream, within [`STREAM_OPEN_TIMEOUT`].
async fn open(
    req: &Request,
    route: &Route<ServerHandle>,
    max_packet: u32,
) -> Result<Channel, Refusal> {
    let address = route.address();
    let opened = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        route
            .handle()
            .open_forwarded_for(&address, req.port, req.peer, max_packet),
    )
    .await;
    match opened {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(Refusal::OpenFailed {
            via: route.via(),
            port: req.port,
            err: e.to_string(),
        }),
        Err(_) => Err(Refusal::OpenTimeout { via: route.via() }),
    }
}

/// The audit line of a stream that ended.
fn closed(req: &Request, device: &str, stats: SpliceStats, started: Instant, disabled: bool) {
    let who = &req.who;
    let mut closed = audit::stream_closed(
        who.system.as_str(),
        who.name.as_str(),
        device,
        &req.target(),
        stats,
        started.elapsed(),
    )
    .peer(req.peer);
    closed.fingerprint = Some(who.fingerprint.to_string());
    closed = closed.detail(if disabled {
        "path=relayed; closed: device disabled by an admin"
    } else {
        "path=relayed"
    });
    req.relay.audit.record(closed);
}
