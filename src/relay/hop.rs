//! Relay-to-relay hops in a cluster: a controller on relay A reaches a
//! device held by relay B. A authenticates, applies policy and audits as
//! always (`stream.rs`), then opens one `direct-tcpip` channel to B over an
//! SSH connection between the two relays, which A logs in to as
//! [`HOP_USER`] with its host key. B trusts only keys of relays in the
//! registry, and serves a hop only to a device connected to B itself: one
//! hop, never more.
//!
//! A keeps one connection per peer relay ([`Hops`]), opened on first use,
//! kept alive by the SSH layer's keepalives, and opened again when it died.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::Mutex;

use super::Relay;
use crate::protocol::limits::{
    HOP_DIAL_TIMEOUT, RELAY_KEEPALIVE_INTERVAL, RELAY_KEEPALIVE_MAX, STREAM_OPEN_TIMEOUT,
};
use crate::protocol::{DeviceId, Name};
use crate::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards, StreamRefused};
use crate::ssh::keys::{self, Fingerprint, PrivateKey};
use crate::ssh::{Channel, IncomingChannel, RefusalKind};
use crate::store::postgres::RelayRecord;

/// The SSH user a relay logs in to another as. Not a valid system name, so
/// no key of a system can stand for a relay.
pub const HOP_USER: &str = "@relay";

/// What a hop asks the peer relay to open: the `direct-tcpip` host of the
/// hop's channel. `SYSTEM/DEVICE` for a device; `SYSTEM/GATEWAY HOST KEY`
/// for a host behind a gateway, where HOST is what the controller asked for
/// (`10.0.0.5`, `db.via.gw1`) and KEY the fingerprint of the key that asked:
/// the peer routes HOST again for that key with its own policy and opens it
/// only through GATEWAY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopTarget {
    Device(DeviceId),
    Gateway {
        gateway: DeviceId,
        host: String,
        key: Fingerprint,
    },
}

impl HopTarget {
    pub fn encode(&self) -> String {
        match self {
            HopTarget::Device(d) => format!("{}/{}", d.system, d.name),
            HopTarget::Gateway { gateway, host, key } => {
                format!("{}/{} {host} {key}", gateway.system, gateway.name)
            }
        }
    }

    /// The target of a hop's channel; `None`: not one of the two forms.
    pub fn parse(s: &str) -> Option<HopTarget> {
        let mut words = s.split(' ');
        let (system, name) = words.next()?.split_once('/')?;
        let id = DeviceId::new(Name::parse(system).ok()?, Name::parse(name).ok()?);
        match (words.next(), words.next(), words.next()) {
            (None, _, _) => Some(HopTarget::Device(id)),
            (Some(host), Some(key), None) if !host.is_empty() => Some(HopTarget::Gateway {
                gateway: id,
                host: host.to_string(),
                key: keys::parse_fingerprint(key).ok()?,
            }),
            _ => None,
        }
    }
}

/// The pooled connections to peer relays, by relay id: each peer's slot
/// locked on its own, so dialing a slow or dead relay holds up no hop to
/// another.
pub struct Hops {
    key: Arc<PrivateKey>,
    conns: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<Conn>>>>>,
}

type Conn = Arc<ClientConnection<NoForwards>>;

impl Hops {
    pub fn new(key: Arc<PrivateKey>) -> Hops {
        Hops {
            key,
            conns: Default::default(),
        }
    }

    /// The live connection to `peer`, opened if there is none.
    async fn connection(&self, peer: &RelayRecord) -> Result<Conn> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer.id.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let Some(address) = &peer.address else {
            bail!(
                "relay {} has no address for other relays (--advertise)",
                peer.id
            );
        };
        let tcp = client::dial(address, HOP_DIAL_TIMEOUT)
            .await
            .with_context(|| format!("dialing relay {address}"))?;
        let opts = ConnectOptions {
            user: HOP_USER.into(),
            key: self.key.clone(),
            host_key: peer.host_key.clone(),
            dead_after: RELAY_KEEPALIVE_INTERVAL * RELAY_KEEPALIVE_MAX as u32,
        };
        let conn = Arc::new(
            client::connect(tcp, &opts, NoForwards)
                .await
                .with_context(|| format!("logging in to relay {address}"))?,
        );
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a stream to `target` on `peer`, port `port`.
    pub async fn open(&self, peer: &RelayRecord, target: &HopTarget, port: u32) -> Result<Channel> {
        self.open_at(peer, target, port).await.map_err(|f| f.error)
    }

    async fn open_at(
        &self,
        peer: &RelayRecord,
        target: &HopTarget,
        port: u32,
    ) -> Result<Channel, Failed> {
        let metrics = crate::metrics::global();
        let t = std::time::Instant::now();
        let conn = self.connection(peer).await.map_err(|error| Failed {
            unreachable: true,
            not_here: false,
            error,
        })?;
        metrics.hop_phase("connect", t.elapsed());
        let t = std::time::Instant::now();
        let host = target.encode();
        let opened = tokio::time::timeout(STREAM_OPEN_TIMEOUT, conn.open(&host, port))
            .await
            .map_err(|_| anyhow!("relay {} did not open the stream in time", peer.id))
            .and_then(|r| r);
        metrics.hop_phase("open", t.elapsed());
        opened.map_err(|error| Failed {
            unreachable: false,
            not_here: error
                .downcast_ref::<StreamRefused>()
                .is_some_and(|r| r.kind() == Some(RefusalKind::NotHere)),
            error,
        })
    }
}

/// Why a hop did not open.
struct Failed {
    /// The peer could not be reached (dialing or logging in to it failed),
    /// rather than refusing or not answering the channel.
    unreachable: bool,
    /// The peer answered that it does not hold the device.
    not_here: bool,
    error: anyhow::Error,
}

/// Opens a hop to `target` on `peer`, the relay the claims received name.
/// They can be behind the store: `peer` was killed a moment ago (and still
/// beats as far as the registry says), or the device's claim on another
/// relay has not arrived. If the hop to a device fails, the store says
/// where the device is now; if another relay holds it, the hop goes there
/// (a stale holder costs one store lookup, not the stream) and the claims
/// map follows the store ([`crate::store::postgres::Pg::holder_after_failed_hop`]).
/// Returns the stream and the relay it went through.
pub(super) async fn open_following(
    relay: &Relay,
    peer: RelayRecord,
    target: &HopTarget,
    port: u32,
) -> (Result<Channel>, RelayRecord) {
    let failed = match relay.hops.open_at(&peer, target, port).await {
        Ok(ch) => return (Ok(ch), peer),
        Err(f) => f,
    };
    // Only a map that may be wrong asks the store: the peer gone, or not
    // holding the device. A refused port or target is the device's answer,
    // and must not cost a query each time a controller retries it.
    let HopTarget::Device(device) = target else {
        return (Err(failed.error), peer);
    };
    if !failed.unreachable && !failed.not_here {
        return (Err(failed.error), peer);
    }
    let (s, n) = (device.system.to_string(), device.name.to_string());
    let (from, unreachable) = (peer.id.clone(), failed.unreachable);
    let now = relay
        .store
        .call(move |st| match st.postgres() {
            Some(pg) => pg.holder_after_failed_hop(&s, &n, &from, unreachable),
            None => Ok(None),
        })
        .await;
    match now {
        Ok(Some(next)) => {
            tracing::debug!(device = %device.name, stale = %peer.id, now = %next.id,
                "the claims named a relay that no longer holds the device; following the store");
            (relay.hops.open(&next, target, port).await, next)
        }
        Ok(None) => (Err(failed.error), peer),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "looking up the relay that holds a device");
            (Err(failed.error), peer)
        }
    }
}

/// The relay holding `system/host` if it is another relay of the cluster:
/// from the claims this relay received, without a store call when they
/// know the device (`Pg::holder`); else from the store.
pub(super) async fn holder(relay: &Relay, system: &Name, host: &str) -> Option<RelayRecord> {
    let pg = relay.store.postgres()?;
    let (s, h) = (system.to_string(), host.to_string());
    let found = match pg.holder_known(&s, &h) {
        Some(known) => Ok(known),
        None => {
            relay
                .store
                .call(move |st| match st.postgres() {
                    Some(pg) => pg.holder(&s, &h),
                    None => Ok(None),
                })
                .await
        }
    };
    match found {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "looking up the relay that holds a device");
            None
        }
    }
}

/// Whether `fp` is the host key of a relay in the registry (its id).
pub(super) async fn peer_relay(relay: &Relay, fp: &str) -> Result<Option<String>> {
    let fp = fp.to_string();
    relay
        .store
        .call(move |st| match st.postgres() {
            Some(pg) => pg.relay_with_key(&fp),
            None => Ok(None),
        })
        .await
}

/// Serves a hop that relay `from` opened here ([`HopTarget`]).
pub(super) async fn serve(
    relay: Arc<Relay>,
    from: String,
    host: String,
    port: u32,
    peer: SocketAddr,
    channel: IncomingChannel,
) {
    match HopTarget::parse(&host) {
        Some(HopTarget::Device(device)) => {
            serve_device(relay, from, device, port, peer, channel).await
        }
        Some(HopTarget::Gateway { gateway, host, key }) => {
            let route = super::hop_gateway::Asked {
                gateway,
                host,
                key,
                port,
            };
            super::hop_gateway::serve(relay, from, route, peer, channel).await
        }
        None => {
            channel
                .refuse(&crate::ssh::Refusal::prohibited(format!(
                    "{host:?} is not SYSTEM/DEVICE nor SYSTEM/GATEWAY HOST KEY"
                )))
                .await
        }
    }
}

/// Serves a hop to `device`: only to a device connected to this relay, on
/// a port it registered.
async fn serve_device(
    relay: Arc<Relay>,
    from: String,
    device: DeviceId,
    port: u32,
    peer: SocketAddr,
    channel: IncomingChannel,
) {
    use crate::ssh::Refusal;
    let Some(entry) = relay.registry.lookup(&device.system, &device.name) else {
        return channel
            .refuse(&Refusal::not_here(format!(
                "device {} is not connected to this relay",
                device.name
            )))
            .await;
    };
    if !entry.ports.contains(&port) {
        return channel
            .refuse(&Refusal::connect_failed(format!(
                "device {} does not serve port {port}",
                device.name
            )))
            .await;
    }
    let Some(guard) = relay.registry.open_stream(&device) else {
        return channel
            .refuse(&Refusal::prohibited(format!(
                "device {} is disabled by an admin",
                device.name
            )))
            .await;
    };
    let max_packet = channel.peer_max_packet();
    let opened = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        entry
            .handle
            .open_forwarded_for(device.name.as_str(), port, peer, max_packet),
    )
    .await;
    let device_channel = match opened {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => {
            return channel
                .refuse(&Refusal::connect_failed(e.to_string()))
                .await;
        }
        Err(_) => {
            return channel
                .refuse(&Refusal::connect_failed(
                    "the device did not answer in time",
                ))
                .await;
        }
    };
    tracing::debug!(%from, device = %device.name, port, "hop stream open");
    let incoming = channel.accept().await;
    // Limits apply on the relay that holds the device.
    let shaper = relay.bandwidth.shaper(&device);
    incoming
        .splice_paced(device_channel, guard.closed.cancelled(), Some(&shaper))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_targets_read_back_as_written_and_nothing_else_reads() {
        let gw = DeviceId::new(Name::parse("tau").unwrap(), Name::parse("gw1").unwrap());
        let targets = [
            HopTarget::Device(gw.clone()),
            HopTarget::Gateway {
                gateway: gw,
                host: "db.via.gw1".into(),
                key: keys::fingerprint(keys::generate_ed25519().unwrap().public_key()),
            },
        ];
        for t in targets {
            assert_eq!(HopTarget::parse(&t.encode()), Some(t));
        }
        for bad in [
            "dev1",
            "tau/",
            "tau/gw1 10.0.0.5",
            "tau/gw1 10.0.0.5 SHA256:x extra",
            "tau/gw1  SHA256:x",
            "tau/gw1 10.0.0.5 ",
            "tau/gw1 10.0.0.5 SHA256:not-a-fingerprint",
            "Tau Caps/gw1",
        ] {
            assert_eq!(HopTarget::parse(bad), None, "{bad:?}");
        }
    }
}
