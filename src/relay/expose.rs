//! Public ports: a relay port that carries each TCP connection to one
//! device port, the way `GatewayPorts` on a jump host would, but only where
//! an admin said so (`warren admin expose`) and only within the relay's
//! `public_ports` ranges (none by default).
//!
//! [`run`] keeps the listeners in line with the store: it reconciles at
//! start, whenever `warren admin` changes the store, and on a config reload.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Relay;
pub use crate::admin::expose::parse_allow_from;
use crate::audit::{self, Event, kind};
use crate::policy::PublicRefusal;
use crate::protocol::limits::STREAM_OPEN_TIMEOUT;
use crate::protocol::{Cidr, DeviceId, Name};
use crate::store::Exposure;

/// Whether `peer` may use a port with this allow list (empty: anyone).
pub fn peer_allowed(allow: &[Cidr], peer: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|n| n.contains(peer))
}

/// What the latest reconcile did, for tests and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposed {
    /// Relay ports listening as public ports.
    pub open: Vec<u16>,
    /// Exposures in the store at that moment (open or not).
    pub known: usize,
}

struct Open {
    exposure: Exposure,
    stop: CancellationToken,
}

/// Keeps public listeners in line with the store until the relay shuts
/// down; listeners and their streams run on the relay's tracker.
pub(super) async fn run(relay: Arc<Relay>, ip: IpAddr) {
    let (tasks, shutdown) = (relay.tasks.clone(), relay.shutting_down().clone());
    let mut open: HashMap<u16, Open> = HashMap::new();
    loop {
        let mut known = 0;
        match relay.store.call(|s| s.exposures()).await {
            Ok(list) => {
                known = list.len();
                reconcile(&relay, ip, &tasks, &shutdown, &mut open, list).await
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reading exposures"),
        }
        let mut ports: Vec<u16> = open.keys().copied().collect();
        ports.sort_unstable();
        relay.exposed.send_replace(Exposed { open: ports, known });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = relay.expose_wake.notified() => {}
        }
    }
    for o in open.values() {
        o.stop.cancel();
    }
}

async fn reconcile(
    relay: &Arc<Relay>,
    ip: IpAddr,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    open: &mut HashMap<u16, Open>,
    list: Vec<Exposure>,
) {
    let allowed = relay.public_ports();
    let mut desired = HashMap::new();
    for e in list {
        if allowed.contains(e.port) {
            desired.insert(e.port, e);
        } else if !open.contains_key(&e.port) {
            tracing::warn!(port = e.port, public_ports = %allowed, "exposure {}/{}:{} not opened: relay port {} is outside public_ports", e.system, e.device, e.device_port, e.port);
        }
    }
    open.retain(|port, o| {
        let keep = desired.get(port) == Some(&o.exposure);
        if !keep {
            o.stop.cancel();
            relay.audit().record(audit::public_port(
                "closed",
                &o.exposure,
                "removed or changed",
            ));
        }
        keep
    });
    for (port, e) in desired {
        if open.contains_key(&port) {
            continue;
        }
        if let Some(o) = open_port(relay, ip, tasks, shutdown, e).await {
            open.insert(port, o);
        }
    }
}

/// Starts listening on one public port; a failure is logged or audited and
/// leaves the port closed until the next reconcile.
async fn open_port(
    relay: &Arc<Relay>,
    ip: IpAddr,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    e: Exposure,
) -> Option<Open> {
    let port = e.port;
    let allow = match parse_allow_from(&e.allow_from) {
        Ok(a) => a,
        Err(err) => {
            tracing::error!(port, "exposure not opened: {err:#}");
            return None;
        }
    };
    let listener = match TcpListener::bind(SocketAddr::new(ip, port)).await {
        Ok(l) => l,
        Err(err) => {
            relay.audit().record(audit::public_port(
                "failed",
                &e,
                &format!("cannot listen on {ip}:{port}: {err}"),
            ));
            return None;
        }
    };
    let stop = shutdown.child_token();
    relay.audit().record(audit::public_port(
        "open",
        &e,
        &format!("listening on {ip}:{port}"),
    ));
    let (r, exposure, streams_stop) = (relay.clone(), e.clone(), stop.clone());
    let admit = move |tcp: TcpStream, peer: SocketAddr| {
        if !peer_allowed(&allow, peer.ip()) {
            r.audit().record(audit::public_refused(
                &exposure,
                peer,
                &PublicRefusal::NotInAllowFrom,
            ));
            return None;
        }
        Some(stream(
            r.clone(),
            exposure.clone(),
            tcp,
            peer,
            streams_stop.clone(),
        ))
    };
    tasks.spawn(super::listen::accept_loop(
        listener,
        stop.clone(),
        tasks.clone(),
        admit,
    ));
    Some(Open { exposure: e, stop })
}

/// Opens the public connection's channel to `device`: connected here, or
/// in a cluster through the relay that holds it (one hop; no stream guard
/// here, the holder keeps its own).
async fn open_channel<'a>(
    relay: &'a Relay,
    e: &Exposure,
    device: DeviceId,
    peer: SocketAddr,
) -> Result<
    (
        crate::ssh::Channel,
        Option<super::registry::StreamGuard<'a>>,
    ),
    PublicRefusal,
> {
    if relay
        .registry
        .lookup(&device.system, &device.name)
        .is_some()
    {
        let (channel, guard) = open_here(relay, e, &device, peer).await?;
        return Ok((channel, Some(guard)));
    }
    let Some(holder) = super::hop::holder(relay, &device.system, device.name.as_str()).await else {
        return Err(PublicRefusal::DeviceNotServing);
    };
    let target = super::hop::HopTarget::Device(device);
    let port = u32::from(e.device_port);
    match super::hop::open_following(relay, holder, &target, port).await {
        (Ok(channel), _) => Ok((channel, None)),
        (Err(err), holder) => Err(PublicRefusal::OpenFailed {
            err: format!("{err:#} (through relay {})", holder.id),
        }),
    }
}

/// Opens the public connection's channel to `device`, connected here.
async fn open_here<'a>(
    relay: &'a Relay,
    e: &Exposure,
    device: &DeviceId,
    peer: SocketAddr,
) -> Result<(crate::ssh::Channel, super::registry::StreamGuard<'a>), PublicRefusal> {
    let entry = relay.registry.lookup(&device.system, &device.name);
    let Some(entry) = entry.filter(|d| d.ports.contains(&u32::from(e.device_port))) else {
        return Err(PublicRefusal::DeviceNotServing);
    };
    let Some(guard) = relay.registry.open_stream(device) else {
        return Err(PublicRefusal::Disabled);
    };
    let opened = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        entry
            .handle
            .open_forwarded(&e.device, u32::from(e.device_port), peer),
    )
    .await;
    match opened {
        Ok(Ok(ch)) => Ok((ch, guard)),
        Ok(Err(err)) => Err(PublicRefusal::OpenFailed {
            err: err.to_string(),
        }),
        Err(_) => Err(PublicRefusal::OpenTimeout),
    }
}

/// Carries one public connection to the device (in a cluster, through the
/// relay that holds it).
async fn stream(
    relay: Arc<Relay>,
    e: Exposure,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let target = format!("{}:{}", e.device, e.device_port);
    let who = format!("public:{}", e.port);
    let refused = |why: PublicRefusal| {
        relay.audit().record(
            Event::new(kind::STREAM_OPEN, audit::REFUSED)
                .peer(peer)
                .system(e.system.as_str())
                .key_name(who.as_str())
                .device(e.device.as_str())
                .target(target.as_str())
                .detail(why.to_string())
                .reason(why.code()),
        )
    };
    let (Ok(system), Ok(name)) = (Name::parse(&e.system), Name::parse(&e.device)) else {
        return refused(PublicRefusal::NoValidDevice);
    };
    let device = DeviceId::new(system, name);
    // Paced here when the device is here (through a hop, its relay paces).
    let shaper = relay.bandwidth.shaper(&device);
    let (channel, guard) = match open_channel(&relay, &e, device, peer).await {
        Ok(opened) => opened,
        Err(why) => return refused(why),
    };
    let disabled = guard.as_ref().map(|g| g.closed.clone()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    relay.audit().record(
        Event::new(kind::STREAM_OPEN, audit::OK)
            .peer(peer)
            .system(e.system.as_str())
            .key_name(who.as_str())
            .device(e.device.as_str())
            .target(target.as_str()),
    );
    let (r, w) = tcp.into_split();
    let mut closed = tokio::select! {
        _ = stop.cancelled() => {
            Event::new(kind::STREAM_CLOSE, "closed").detail("public port removed")
        }
        _ = disabled.cancelled() => {
            Event::new(kind::STREAM_CLOSE, "closed").detail("closed: device disabled by an admin")
        }
        stats = channel.splice_io_paced(r, w, guard.is_some().then_some(&shaper as &dyn crate::ssh::Pace)) => {
            audit::stream_closed(&e.system, &who, &e.device, &target, stats, started.elapsed())
        }
    };
    drop(guard);
    closed = closed
        .peer(peer)
        .system(e.system.as_str())
        .key_name(who.as_str())
        .device(e.device.as_str())
        .target(target.as_str());
    relay.audit().record(closed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_from_filters_peers() {
        let allow = parse_allow_from(&["10.0.0.0/8".into(), "192.0.2.7".into()]).unwrap();
        assert!(peer_allowed(&allow, "10.1.2.3".parse().unwrap()));
        assert!(peer_allowed(&allow, "192.0.2.7".parse().unwrap()));
        assert!(peer_allowed(&allow, "::ffff:10.9.9.9".parse().unwrap()));
        assert!(!peer_allowed(&allow, "192.0.2.8".parse().unwrap()));
        assert!(!peer_allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(peer_allowed(&[], "203.0.113.1".parse().unwrap()));
        assert!(parse_allow_from(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_allow_from(&["everyone".into()]).is_err());
        // One network type everywhere: host bits are refused, as for gateways.
        let err = parse_allow_from(&["10.1.2.3/8".into()]).unwrap_err();
        assert!(err.to_string().contains("host bits"), "{err}");
    }
}
