//! The device agent: dials the relay (outbound only), registers its name with
//! `tcpip-forward`, serves streams to allowed local targets, and reconnects
//! forever with exponential backoff and jitter.

pub mod config;
pub mod doctor;
pub mod gateway;
pub mod on_demand;
pub mod p2p;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use config::AgentSettings;
use gateway::GatewayState;

use crate::protocol::device_info::DeviceInfo;
use crate::protocol::gateway::{ANNOUNCE_COMMAND, Associations, CONTROL_ADDRESS, list};
use crate::protocol::limits::{BACKOFF_RESET_AFTER, STREAM_OPEN_TIMEOUT, TARGET_CONNECT_TIMEOUT};
use crate::protocol::{AllowList, Backoff, Name, Target};
use crate::ssh::client::{self, ConnectOptions, ForwardedHandler};
use crate::ssh::{IncomingChannel, Refusal, keys};

/// State changes, for tests and embedding (the log says the same in words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Registered with the relay; streams can arrive.
    Online,
    /// The connection ended or could not be made; a retry follows.
    Offline { reason: String },
    /// A gateway took a list of associated networks from the relay (at
    /// connect, and whenever an admin changes them): those it serves, and
    /// those its `permit` refuses.
    Associations {
        served: Vec<String>,
        refused: Vec<String>,
    },
}

/// Runs the agent until `shutdown`.
pub async fn run(
    settings: AgentSettings,
    shutdown: CancellationToken,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
) {
    let (_keep, config) = watch::channel(settings);
    run_with_reload(config, shutdown, events).await
}

/// Live streams and when the last one ended: an on-demand agent sleeps
/// after `idle_timeout` without any.
pub(crate) struct Activity {
    /// (live streams, when the count last fell to zero or was reset)
    state: Mutex<(usize, Instant)>,
    changed: watch::Sender<u64>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new((0, Instant::now())),
            changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        // Two plain numbers: a poisoned lock still holds a usable pair.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a stream until the guard drops.
    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.lock().0 += 1;
        self.changed.send_modify(|v| *v += 1);
        ActivityGuard(self.clone())
    }

    /// Idle time counts from now (a new connection).
    pub(crate) fn reset(&self) {
        self.lock().1 = Instant::now();
        self.changed.send_modify(|v| *v += 1);
    }

    /// Since when no stream has been open; `None` while one is.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let (live, since) = *self.lock();
        (live == 0).then_some(since)
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// One live stream, for [`Activity`].
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.0 = s.0.saturating_sub(1);
            if s.0 == 0 {
                s.1 = Instant::now();
            }
        }
        self.0.changed.send_modify(|v| *v += 1);
    }
}

/// The allowlist in force; swapped whole on reload, read per stream.
type SharedAllow = Arc<RwLock<Arc<AllowList>>>;

fn current(allow: &SharedAllow) -> Arc<AllowList> {
    // Writers only swap the Arc, so a poisoned lock still holds a whole list.
    allow.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs the agent until `shutdown`, taking each new value of `config` as a
/// reloaded config (SIGHUP): the allowlist applies at once to new streams,
/// added ports are registered on the live connection, and live streams are
/// never touched.
pub async fn run_with_reload(
    mut config: watch::Receiver<AgentSettings>,
    shutdown: CancellationToken,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
) {
    let emit = |e: AgentEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    let mut settings = config.borrow_and_update().clone();
    let allow: SharedAllow = Arc::new(RwLock::new(Arc::new(settings.allow.clone())));
    let mut backoff = Backoff::new();
    let mut turn = 0usize;
    let gw = Arc::new(GatewayState::new(
        settings.name.clone(),
        settings.gateway.clone(),
        events.clone(),
    ));
    let mut accepted = gateway::start_listens(&settings.gateway.listens, &shutdown);
    let activity = Activity::new();
    loop {
        let started = Instant::now();
        let links = Links {
            allow: &allow,
            gateway: &gw,
            accepted: &mut accepted,
            config: &mut config,
            activity: &activity,
        };
        let reason = session(&mut settings, links, &emit, &shutdown, turn).await;
        turn += 1;
        if shutdown.is_cancelled() {
            return;
        }
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = Backoff::new();
        }
        let delay = backoff.next_delay();
        tracing::warn!(relay = %settings.relay, retry_in = ?delay, "offline: {reason}");
        emit(AgentEvent::Offline { reason });
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut wait => break,
                changed = config.changed() => {
                    if changed.is_err() {
                        // No more reloads can come; keep running as is.
                        (&mut wait).await;
                        break;
                    }
                    let new = config.borrow_and_update().clone();
                    settings = apply_reload(&settings, new, &allow).0;
                }
            }
        }
    }
}

/// What a session shares with the agent's life: the allowlist, the gateway
/// state, connections accepted on listen forwards, and reloaded configs.
struct Links<'a> {
    allow: &'a SharedAllow,
    gateway: &'a Arc<GatewayState>,
    accepted: &'a mut mpsc::Receiver<gateway::Accepted>,
    config: &'a mut watch::Receiver<AgentSettings>,
    /// Live streams, for an on-demand agent's idle timer.
    activity: &'a Arc<Activity>,
}

/// Takes what is safe from a reloaded config: the allowlist. Changes to
/// the relay, identity, key or keepalive need a new connection, which would
/// drop live streams: they are reported and wait for a restart. Returns the
/// settings now in force and the ports the new list adds.
fn apply_reload(
    old: &AgentSettings,
    new: AgentSettings,
    allow: &SharedAllow,
) -> (AgentSettings, Vec<u16>) {
    let mut ignored = Vec::new();
    if new.relay != old.relay {
        ignored.push("relay");
    }
    if new.system != old.system {
        ignored.push("system");
    }
    if new.name != old.name {
        ignored.push("name");
    }
    if keys::fingerprint(new.key.public_key()) != keys::fingerprint(old.key.public_key()) {
        ignored.push("key");
    }
    if new.relay_host_key != old.relay_host_key {
        ignored.push("relay_host_key");
    }
    if new.dead_after != old.dead_after {
        ignored.push("keepalive_timeout");
    }
    if new.labels != old.labels {
        ignored.push("labels");
    }
    if new.gateway != old.gateway {
        ignored.push("scope, scope_ports, permit or listen");
    }
    if new.on_demand != old.on_demand {
        ignored.push("on_demand");
    }
    if !ignored.is_empty() {
        tracing::warn!(
            "config reload: {} changed; that takes a restart of the agent (kept the running values)",
            ignored.join(", ")
        );
    }
    let added: Vec<u16> = new
        .allow
        .ports()
        .filter(|p| old.allow.target_for(u32::from(*p)).is_none())
        .collect();
    let removed: Vec<u16> = old
        .allow
        .ports()
        .filter(|p| new.allow.target_for(u32::from(*p)).is_none())
        .collect();
    *allow.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new.allow.clone());
    let ports: Vec<String> = new.allow.ports().map(|p| p.to_string()).collect();
    tracing::info!(
        ports = %ports.join(","),
        "config reloaded: allowlist now {:?}", new.allow
    );
    if !removed.is_empty() {
        tracing::info!(
            ?removed,
            "removed ports are refused from now on; the relay lists them until the next reconnect"
        );
    }
    let settings = AgentSettings {
        allow: new.allow,
        ..old.clone()
    };
    (settings, added)
}

/// One connection, from dial to end. Returns why it ended.
async fn session(
    settings: &mut AgentSettings,
    links: Links<'_>,
    emit: &impl Fn(AgentEvent),
    shutdown: &CancellationToken,
    turn: usize,
) -> String {
    let Links {
        allow,
        gateway: gw,
        accepted,
        config,
        activity,
    } = links;
    // A cluster's relays in turn: each new session after a failed one
    // dials the next.
    let relays: Vec<String> = settings.relay.split(',').map(str::to_string).collect();
    let relay = relays[turn % relays.len().max(1)].clone();
    tracing::info!(%relay, "connecting to relay");
    let tcp = match crate::transport::dial(&relay, &settings.dial_options()).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let opts = ConnectOptions {
        user: settings.system.to_string(),
        key: settings.key.clone(),
        host_key: settings.relay_host_key.clone(),
        dead_after: settings.dead_after,
    };
    let serve = Serve {
        name: settings.name.clone(),
        allow: allow.clone(),
        gateway: gw.clone(),
        activity: activity.clone(),
        p2p: settings.p2p.then(|| p2p::Ctx {
            name: settings.name.clone(),
            relay: settings.relay.clone(),
            allow: allow.clone(),
        }),
    };
    let mut conn = tokio::select! {
        _ = shutdown.cancelled() => return "shutting down".into(),
        c = client::connect(tcp, &opts, serve) => match c {
            Ok(c) => c,
            Err(e) => return format!("{e:#}"),
        },
    };
    if let Err(e) = register(&conn, settings, allow, gw).await {
        conn.disconnect().await;
        return format!("{e:#}");
    }
    emit(AgentEvent::Online);
    let mut reloads = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                conn.disconnect().await;
                return "shutting down".into();
            }
            reason = conn.is_gone() => return reason,
            Some(a) = accepted.recv() => carry_out(&conn, a).await,
            changed = config.changed(), if reloads => {
                if changed.is_err() {
                    reloads = false;
                    continue;
                }
                let new = config.borrow_and_update().clone();
                let (now, added) = apply_reload(settings, new, allow);
                *settings = now;
                for port in added {
                    if let Err(e) = conn.register(settings.name.as_str(), u32::from(port)).await {
                        tracing::warn!(port, "config reload: {e:#}");
                    }
                }
            }
        }
    }
}

/// Tells the relay who this device is (version, labels, on demand), then
/// registers its ports and, for a gateway, announces its scope.
async fn register<H: ForwardedHandler>(
    conn: &client::ClientConnection<H>,
    settings: &AgentSettings,
    allow: &SharedAllow,
    gw: &Arc<GatewayState>,
) -> anyhow::Result<()> {
    // Version and labels first, so the registration below carries them. A
    // relay that does not know the command is no reason to stay offline.
    let mut info = DeviceInfo::ours(settings.labels.clone());
    info.on_demand = settings.on_demand.is_some();
    let out = conn.exec(&info.to_command()).await?;
    if out.status != 0 {
        tracing::warn!(
            "relay refused device-info: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let list = current(allow);
    for port in list.ports() {
        conn.register(settings.name.as_str(), u32::from(port))
            .await?;
    }
    let ports: Vec<String> = list.ports().map(|p| p.to_string()).collect();
    tracing::info!(
        relay = %settings.relay,
        system = %settings.system,
        name = %settings.name,
        ports = %ports.join(","),
        "online: registered as {}/{}", settings.system, settings.name
    );
    gw.new_connection();
    if gw.config.is_gateway() {
        announce(conn, gw).await?;
    }
    Ok(())
}

/// Tells the relay this agent's scope, ports, permit and listens, and takes
/// the associations it answers with.
async fn announce<H: ForwardedHandler>(
    conn: &client::ClientConnection<H>,
    gw: &GatewayState,
) -> anyhow::Result<()> {
    let announce = serde_json::to_string(&gw.config.announce())?;
    let out = conn.exec(&format!("{ANNOUNCE_COMMAND} {announce}")).await?;
    if out.status != 0 {
        anyhow::bail!(
            "relay refused the gateway announcement: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let a: Associations = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("relay answered the gateway announcement with {e}"))?;
    tracing::info!(
        scope = %list(&gw.config.scope),
        "gateway: serving {} on ports {:?}",
        list(&gw.config.scope),
        gw.config.ports
    );
    gw.set_associations(a);
    Ok(())
}

/// Opens a stream through the relay for a connection accepted on a listen
/// forward. Opening waits for the relay (bounded); the bytes then flow in
/// their own task.
async fn carry_out<H: ForwardedHandler>(conn: &client::ClientConnection<H>, a: gateway::Accepted) {
    let opened = tokio::time::timeout(
        STREAM_OPEN_TIMEOUT,
        conn.open(&a.to.host, u32::from(a.to.port)),
    )
    .await;
    match opened {
        Ok(Ok(ch)) => {
            tracing::debug!(to = %a.to, peer = %a.peer, "listen forward open");
            let _ = a.tcp.set_nodelay(true);
            tokio::spawn(ch.splice_tcp(a.tcp));
        }
        Ok(Err(e)) => tracing::warn!(to = %a.to, peer = %a.peer, "listen forward refused: {e:#}"),
        Err(_) => {
            tracing::warn!(to = %a.to, peer = %a.peer, "listen forward: relay did not answer")
        }
    }
}

/// Serves streams the relay opens to this device.
struct Serve {
    name: Name,
    allow: SharedAllow,
    gateway: Arc<GatewayState>,
    activity: Arc<Activity>,
    /// Direct paths (`p2p` in the config); `None`: refused.
    p2p: Option<p2p::Ctx>,
}

/// Which local target a stream the relay opened for `address:port` may
/// reach: only this device's own name, and only ports in the allowlist.
fn admit(name: &Name, allow: &AllowList, address: &str, port: u32) -> Result<Target, Refusal> {
    if address != name.as_str() {
        return Err(Refusal::prohibited(format!(
            "this is device {name}, not {address:?}"
        )));
    }
    allow.target_for(port).cloned().ok_or_else(|| {
        Refusal::prohibited(format!(
            "port {port} is not in the allowlist of device {name}"
        ))
    })
}

impl ForwardedHandler for Serve {
    fn p2p(&mut self, from: &str, _port: u32, channel: IncomingChannel) {
        let Some(ctx) = self.p2p.clone() else {
            let r = Refusal::prohibited(format!(
                "direct paths are off on device {} (p2p = false)",
                self.name
            ));
            tokio::spawn(async move { channel.refuse(&r).await });
            return;
        };
        tokio::spawn(p2p::serve(ctx, from.to_string(), channel));
    }

    fn forwarded(&mut self, address: &str, port: u32, channel: IncomingChannel) {
        if address == CONTROL_ADDRESS && self.gateway.config.is_gateway() {
            tokio::spawn(gateway::receive_associations(self.gateway.clone(), channel));
            return;
        }
        if address != self.name.as_str() && self.gateway.config.is_gateway() {
            let host = address.to_string();
            let counted = self.activity.begin();
            let gw = self.gateway.clone();
            tokio::spawn(async move {
                gateway::serve_host(gw, host, port, channel).await;
                drop(counted);
            });
            return;
        }
        let target = match admit(&self.name, &current(&self.allow), address, port) {
            Ok(t) => t,
            Err(refusal) => {
                tracing::warn!(asked = address, port, "refused stream: {refusal}");
                tokio::spawn(async move { channel.refuse(&refusal).await });
                return;
            }
        };
        let counted = self.activity.begin();
        tokio::spawn(async move {
            serve_stream(target, channel).await;
            drop(counted);
        });
    }
}

/// Connects to the local target first, so that a target that is down is a
/// clear refusal for the controller rather than an open-then-close.
async fn serve_stream(target: Target, channel: IncomingChannel) {
    let addr = target.connect_string();
    let connected = tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(&addr)).await;
    let tcp = match connected {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::warn!(target = %addr, error = %e, "target refused");
            let r = Refusal::connect_failed(format!("target {addr}: {e}"));
            return channel.refuse(&r).await;
        }
        Err(_) => {
            tracing::warn!(target = %addr, "target did not answer");
            let r = Refusal::connect_failed(format!("target {addr} did not answer"));
            return channel.refuse(&r).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let ch = channel.accept().await;
    let stats = ch.splice_tcp(tcp).await;
    tracing::debug!(
        target = %addr,
        sent = stats.sent,
        received = stats.received,
        bypassed = stats.bypassed,
        "stream closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_admits_only_its_name_and_allowed_ports() {
        let name = Name::parse("dev1").unwrap();
        let allow = AllowList::parse(&["22=127.0.0.1:2201", "8080"]).unwrap();
        assert_eq!(
            admit(&name, &allow, "dev1", 22).unwrap().to_string(),
            "127.0.0.1:2201"
        );
        assert_eq!(
            admit(&name, &allow, "dev1", 8080).unwrap().to_string(),
            "127.0.0.1:8080"
        );
        let err = admit(&name, &allow, "dev1", 2201).unwrap_err();
        assert!(err.message.contains("not in the allowlist"), "{err}");
        let err = admit(&name, &allow, "dev2", 22).unwrap_err();
        assert!(err.message.contains("not \"dev2\""), "{err}");
    }
}
