//! The relay's part in direct paths ([`crate::p2p`]): route the
//! `p2p@warren` channel exactly as a stream, open the same channel type on
//! the device's connection, and carry the signalling between the two,
//! parsing every line. Afterwards each direct stream is authorized here
//! (routed again, audited with `path=direct`) before the device is told
//! to accept it. A device with a bandwidth limit (its own or its system's)
//! is offered no direct path: its streams stay relayed and paced.
//! [`Paths`] keeps, per device, how many direct paths are up
//! and why the last attempt failed, for `ls`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Relay;
use super::router::{self, Route};
use crate::audit::{self, Event, kind};
use crate::p2p::signal::{Lines, Signal};
use crate::protocol::DeviceId;
use crate::protocol::limits::STREAM_OPEN_TIMEOUT;
use crate::ssh::{IncomingChannel, Refusal, SpliceStats};
use crate::store::Identity;

/// Direct streams one signalling channel may have open at once (the
/// relay keeps a line of state per stream until its `end`).
const MAX_DIRECT_STREAMS: usize = 4096;

/// Per device: direct paths up, and the reason the latest attempt gave.
#[derive(Default)]
pub struct Paths {
    map: Mutex<HashMap<DeviceId, PathInfo>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathInfo {
    pub direct: usize,
    pub why_relayed: Option<String>,
}

impl Paths {
    /// What `ls` shows for `device`: `direct`, or `relayed` and why.
    pub fn get(&self, device: &DeviceId) -> PathInfo {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(device).cloned().unwrap_or_default()
    }

    fn update(&self, device: &DeviceId, f: impl FnOnce(&mut PathInfo)) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(device.clone()).or_default();
        f(e);
        if *e == PathInfo::default() {
            m.remove(device);
        }
    }

    fn failed(&self, device: &DeviceId, why: &str) {
        self.update(device, |e| e.why_relayed = Some(why.to_string()));
    }
}

/// One signalling channel's fixed facts.
struct Session {
    relay: Arc<Relay>,
    who: Identity,
    device: DeviceId,
    peer: SocketAddr,
}

/// Routes and then mediates one `p2p@warren` channel from a controller.
pub(super) async fn signal(
    relay: Arc<Relay>,
    who: Identity,
    host: String,
    port: u32,
    peer: SocketAddr,
    channel: IncomingChannel,
) {
    let route = match router::route(relay.as_ref(), &who, &host, port).await {
        Ok(r) => r,
        Err(r) => return channel.refuse(&r.to_wire()).await,
    };
    let Route::Device { device, handle } = route else {
        let text = format!("{host} is reached through a gateway: direct paths go only to devices");
        return channel.refuse(&Refusal::prohibited(text)).await;
    };
    let no = |why: String| {
        relay.paths.failed(&device, &why);
        Refusal::prohibited(why)
    };
    if relay.options.forbid_direct.contains(&device.system) {
        let why = format!("the relay forbids direct paths in system {}", device.system);
        return channel.refuse(&no(why)).await;
    }
    if relay.bandwidth.limited(&device) {
        // Bytes of a direct path never cross the relay, so no limit could
        // hold there: a limited device's streams stay relayed, and paced.
        let why = format!(
            "device {} has a bandwidth limit (its own or system {}'s): its streams stay relayed",
            device.name, device.system
        );
        return channel.refuse(&no(why)).await;
    }
    let Some(udp_port) = relay.options.udp_port else {
        let why = "the relay has no UDP discovery (--udp off)".to_string();
        return channel.refuse(&no(why)).await;
    };
    let opened = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        handle.open_p2p(who.name.as_str(), port),
    )
    .await;
    let device_channel = match opened {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => {
            let why = format!("device {} takes no direct paths: {e}", device.name);
            return channel.refuse(&no(why)).await;
        }
        Err(_) => {
            let why = format!(
                "device {} did not answer the direct-path request",
                device.name
            );
            return channel.refuse(&no(why)).await;
        }
    };
    let ctl = Lines::new(channel.accept().await);
    let dev = Lines::new(device_channel);
    let hello = Signal::Hello {
        udp_port: Some(udp_port),
    };
    if !(ctl.send(&hello).await && dev.send(&hello).await) {
        return;
    }
    let s = Session {
        relay: relay.clone(),
        who,
        device,
        peer,
    };
    let stop = relay.shutting_down().clone();
    tokio::select! {
        _ = mediate(&s, ctl, dev) => {}
        _ = stop.cancelled() => {}
    }
}

/// A direct stream authorized and not yet ended.
struct Open {
    target: String,
    started: Instant,
}

async fn mediate(s: &Session, mut ctl: Lines, mut dev: Lines) {
    let mut up = false;
    let mut streams: HashMap<u64, Open> = HashMap::new();
    let why = loop {
        tokio::select! {
            m = ctl.recv() => match m {
                Ok(Some(Signal::Offer(c))) => {
                    dev.send(&Signal::Offer(c)).await;
                }
                Ok(Some(Signal::Up)) if !up => {
                    up = true;
                    s.relay.paths.update(&s.device, |e| {
                        e.direct += 1;
                        e.why_relayed = None;
                    });
                    tracing::info!(device = %s.device.name, controller = %s.who.name, "direct path up");
                }
                Ok(Some(Signal::Stream { id, host, port })) if streams.len() < MAX_DIRECT_STREAMS => {
                    authorize(s, &ctl, &dev, &mut streams, id, &host, port).await;
                }
                Ok(Some(Signal::End { id, up, down, ms })) => {
                    if let Some(o) = streams.remove(&id) {
                        closed(s, &o, up, down, Duration::from_millis(ms));
                    }
                }
                Ok(Some(Signal::Failed { why })) => break why,
                Ok(None) => break "the controller closed the direct path".to_string(),
                Ok(Some(other)) => break format!("controller sent an unexpected {other:?}"),
                Err(e) => break format!("controller signalling: {e:#}"),
            },
            m = dev.recv() => match m {
                Ok(Some(a @ Signal::Answer(_))) => {
                    ctl.send(&a).await;
                }
                Ok(Some(Signal::Decline { why })) => {
                    ctl.send(&Signal::Decline { why: why.clone() }).await;
                    break why;
                }
                Ok(None) => break "the device closed the direct path".to_string(),
                Ok(Some(other)) => break format!("device sent an unexpected {other:?}"),
                Err(e) => break format!("device signalling: {e:#}"),
            },
        }
    };
    for (_, o) in streams.drain() {
        closed(s, &o, 0, 0, o.started.elapsed());
    }
    s.relay.paths.update(&s.device, |e| {
        if up {
            e.direct = e.direct.saturating_sub(1);
        }
        e.why_relayed = Some(why.clone());
    });
    tracing::info!(device = %s.device.name, controller = %s.who.name, "direct path ended: {why}");
    ctl.close();
    dev.close();
}

/// Routes one direct stream as a relayed one would be, audits it, and
/// tells the device (first) and the controller.
async fn authorize(
    s: &Session,
    ctl: &Lines,
    dev: &Lines,
    streams: &mut HashMap<u64, Open>,
    id: u64,
    host: &str,
    port: u16,
) {
    let target = format!("{host}:{port}");
    let event = |outcome: &str| {
        Event::new(kind::STREAM_OPEN, outcome)
            .peer(s.peer)
            .system(s.who.system.as_str())
            .key(s.who.name.as_str(), s.who.fingerprint.as_str())
            .device(s.device.name.as_str())
            .target(target.clone())
    };
    let refusal = match router::route(s.relay.as_ref(), &s.who, host, u32::from(port)).await {
        Ok(Route::Device { device, .. }) if device == s.device => None,
        Ok(_) => Some((
            format!(
                "{target} is not device {} of this direct path",
                s.device.name
            ),
            "not_this_path",
        )),
        Err(r) => Some((r.to_string(), r.code())),
    };
    if let Some((why, code)) = refusal {
        s.relay.audit.record(
            event(audit::REFUSED)
                .detail(format!("path=direct: {why}"))
                .reason(code),
        );
        ctl.send(&Signal::Refused { id, why }).await;
        return;
    }
    s.relay.audit.record(event(audit::OK).detail("path=direct"));
    streams.insert(
        id,
        Open {
            target,
            started: Instant::now(),
        },
    );
    dev.send(&Signal::Allow { id, port }).await;
    ctl.send(&Signal::Ok { id }).await;
}

/// The audit line of a direct stream that ended; its bytes are the
/// controller's count (none of them passed through the relay).
fn closed(s: &Session, o: &Open, up: u64, down: u64, took: Duration) {
    let stats = SpliceStats {
        sent: up,
        received: down,
        bypassed: 0,
    };
    let mut e = audit::stream_closed(
        s.who.system.as_str(),
        s.who.name.as_str(),
        s.device.name.as_str(),
        &o.target,
        stats,
        took,
    )
    .peer(s.peer)
    .detail("path=direct (bytes as counted by the controller; none passed through the relay)");
    e.fingerprint = Some(s.who.fingerprint.to_string());
    s.relay.audit.record(e);
}
