//! One relay connection: authentication, registration, routing, splicing.
//!
//! [`run`] owns the connection's lifetime; [`Connection`] holds its state and
//! answers the SSH layer's callbacks. Anything that waits (opening a channel
//! to a device, splicing, commands and their store calls) runs in a task of
//! its own, never in a callback: the key lookup at login is the one store
//! call a callback awaits, and it reads on a connection of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::ratelimit::Flood;
use super::registry::{ConnId, Holder, LiveConn};
use super::{Relay, StatusChange, commands, enroll, gateways};
use crate::audit::{self, Event, kind};
use crate::policy;
use crate::protocol::device_info::{self, DeviceInfo};
use crate::protocol::limits::{
    ENROLL_SESSION_TIMEOUT, MAX_COMMANDS_IN_FLIGHT, MAX_ENROLL_ATTEMPTS, MAX_FORWARD_REQUESTS,
};
use crate::protocol::token::ENROLL_USER;
use crate::protocol::{DeviceId, Name, Role};
use crate::ssh::server::{self, Exec, ExecOutput, ServerHandle, ServerSession};
use crate::ssh::{Fingerprint, IncomingChannel, PublicKey, keys};
use crate::store::{self, Identity};

/// Registered keys one `key_probe` record lists; more are only counted (in
/// `queries`). A client asks about a few keys, never sixteen it cannot use.
const MAX_PROBES_LISTED: usize = 16;

/// Runs one accepted connection to its end.
pub(super) async fn run(
    relay: Arc<Relay>,
    stream: crate::ssh::Socket,
    peer: SocketAddr,
    id: ConnId,
    permit: super::ratelimit::Slot,
) {
    let span = tracing::info_span!("conn", id, %peer, system = tracing::field::Empty, name = tracing::field::Empty);
    async move {
        let conn = Connection {
            relay: relay.clone(),
            id,
            peer,
            identity: None,
            enrolling: None,
            info: DeviceInfo::default(),
            refused: Vec::new(),
            refused_user: None,
            probed: Vec::new(),
            probed_system: None,
            store_down: None,
            hop_from: None,
            queries: 0,
            enroll_offered: None,
            forward_requests: 0,
            permit: Some(permit),
            handle: None,
            tasks: relay.tasks.clone(),
            span: tracing::Span::current(),
            last_exec: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            enroll_attempts: 0,
            ended: CancellationToken::new(),
        };
        let shutting_down = relay.shutting_down().clone();
        // The SSH layer ends a connection that does not log in within
        // `handshake_timeout` (`ServerConfig::set_login_grace`).
        let started = tokio::select! {
            // Boxed: the handshake's state (and `conn` until the SSH layer
            // takes it) would otherwise stay part of this task's size for
            // the connection's whole life.
            started = Box::pin(server::start(&relay.server_config, stream, conn)) => match started {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "handshake failed");
                    return;
                }
            },
            // Before the version exchange there is no one to tell: the
            // socket just closes.
            _ = shutting_down.cancelled() => return,
        };
        let handle = started.handle();
        let finished = started.finished();
        tokio::pin!(finished);
        tokio::select! {
            _ = &mut finished => return,
            _ = shutting_down.cancelled() => {
                // In any state: logging in, enrolling, or serving.
                handle.disconnect("relay shutting down").await;
            }
        }
        let _ = finished.await;
    }
    .instrument(span)
    .await
}

struct Connection {
    relay: Arc<Relay>,
    id: ConnId,
    peer: SocketAddr,
    identity: Option<Identity>,
    /// The new key of a machine enrolling (user `enroll`): it may only run
    /// `enroll TOKEN`.
    enrolling: Option<PublicKey>,
    /// What the agent said about itself (`device-info`).
    info: DeviceInfo,
    /// Fingerprints offered and refused, for the audit line if no key works.
    refused: Vec<Fingerprint>,
    /// The user name those keys were offered for.
    refused_user: Option<String>,
    /// Registered keys the relay said yes to when asked without a
    /// signature, and that were never used to log in (key probing).
    probed: Vec<Fingerprint>,
    probed_system: Option<String>,
    /// Why logins are refused outright: the store could not be asked.
    store_down: Option<String>,
    /// The relay of the cluster this connection comes from (hops only).
    hop_from: Option<String>,
    /// `publickey` queries without a signature so far.
    queries: u64,
    /// The first key offered as user `enroll`, until a login completes.
    enroll_offered: Option<Fingerprint>,
    /// `tcpip-forward` requests so far, capped at [`MAX_FORWARD_REQUESTS`].
    forward_requests: usize,
    /// Held until authentication: caps unauthenticated connections.
    permit: Option<super::ratelimit::Slot>,
    handle: Option<ServerHandle>,
    tasks: TaskTracker,
    span: tracing::Span,
    /// Ends when the previous command's task does (see `exec_task`).
    last_exec: Option<oneshot::Receiver<()>>,
    /// Commands running or waiting their turn, at most
    /// [`MAX_COMMANDS_IN_FLIGHT`].
    in_flight: Arc<AtomicUsize>,
    /// `enroll TOKEN` runs on this connection, at most [`MAX_ENROLL_ATTEMPTS`].
    enroll_attempts: usize,
    /// Cancelled when the connection ends, for its commands still running.
    ended: CancellationToken,
}

impl Connection {
    /// A relay of the cluster logging in to open hops: its host key must
    /// be in the registry.
    async fn check_relay_key(&mut self, user: &str, fp: Fingerprint, verified: bool) -> bool {
        match super::hop::peer_relay(&self.relay, &fp).await {
            Ok(Some(id)) => {
                if verified {
                    self.relay.audit.record(
                        Event::new(kind::LOGIN, audit::OK)
                            .peer(self.peer)
                            .key(format!("relay {id}"), fp.as_str())
                            .detail("a relay of the cluster, for hops"),
                    );
                    self.hop_from = Some(id);
                }
                true
            }
            Ok(None) => {
                self.refuse_login(user, fp);
                false
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "store lookup failed during a relay's login");
                false
            }
        }
    }

    fn refuse_login(&mut self, user: &str, fp: Fingerprint) {
        if !self.refused.contains(&fp) {
            self.refused.push(fp);
        }
        if self.refused_user.is_none() {
            self.refused_user = Some(user.chars().take(64).collect());
        }
        tracing::debug!(user, "key refused");
    }
}

impl Connection {
    /// At the end: an enroll login begun and never completed, and registered
    /// keys asked about without ever being used (aggregated per address).
    fn audit_unfinished_logins(&mut self) {
        if self.enrolling.is_none()
            && self.identity.is_none()
            && let Some(fp) = self.enroll_offered.take()
        {
            let mut e = audit::login_refused(
                self.peer,
                ENROLL_USER,
                audit::login_reason::ENROLL_UNSIGNED,
                "enroll: a key was offered but never signed with",
            );
            e.fingerprint = Some(fp.into());
            self.relay
                .record_flood(self.peer.ip(), Flood::EnrollRefused, e);
        }
        if !self.probed.is_empty() {
            let e = Event::new(kind::KEY_PROBE, audit::REFUSED)
                .peer(self.peer)
                .system(self.probed_system.clone().unwrap_or_default())
                .detail(format!(
                    "asked whether {} registered key(s) may log in without signing with them: {} ({} publickey queries without signature)",
                    self.probed.len(),
                    self.probed.join(", "),
                    self.queries
                ));
            self.relay.record_flood(self.peer.ip(), Flood::KeyProbe, e);
        }
    }

    fn register_refused(&self, asked: &str, refusal: &policy::RegisterRefusal) {
        if let Some(who) = &self.identity {
            self.relay.audit.record(
                Event::new(kind::REGISTER, audit::REFUSED)
                    .peer(self.peer)
                    .system(who.system.as_str())
                    .key(who.name.as_str(), who.fingerprint.as_str())
                    .device(asked.chars().take(64).collect::<String>())
                    .detail(refusal.to_string())
                    .reason(refusal.code()),
            );
        }
    }

    /// `device-info …` from an agent: kept for the registration that
    /// follows, or applied now if the device is already registered.
    fn device_info(&mut self, words: &[&str]) -> ExecOutput {
        let info = match DeviceInfo::parse(words) {
            Ok(i) => i,
            Err(e) => {
                return ExecOutput::fail(2, format!("device-info: {e}\n"));
            }
        };
        self.info = info;
        if let Some(who) = &self.identity
            && let Some(entry) = self.relay.registry.lookup(&who.system, &who.name)
            && entry.conn == self.id
        {
            self.relay.status(StatusChange::Up {
                device: DeviceId::new(who.system.clone(), who.name.clone()),
                peer: self.peer,
                ports: entry
                    .ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect(),
                info: self.info.clone(),
            });
        }
        ExecOutput::default()
    }
}

impl Connection {
    /// Runs a command in a task of its own (store calls wait there, not in
    /// the connection's task), after the commands before it on this
    /// connection finished, so they take effect in the order sent.
    fn exec_task(&mut self, run: impl Future<Output = ExecOutput> + Send + 'static) -> Exec {
        if self.in_flight.load(Ordering::Relaxed) >= MAX_COMMANDS_IN_FLIGHT {
            return Exec::Done(ExecOutput::fail(
                1,
                format!(
                    "more than {MAX_COMMANDS_IN_FLIGHT} commands waiting on this connection; \
                 wait for one to finish\n"
                ),
            ));
        }
        let counted = InFlight::new(self.in_flight.clone());
        let (done, next) = oneshot::channel::<()>();
        let previous = self.last_exec.replace(next);
        let ended = self.ended.clone();
        Exec::Task(Box::pin(
            async move {
                let _counted = counted;
                // Nobody reads the answer of a connection that ended: its
                // queued commands stop there, store work and all.
                let out = tokio::select! {
                    out = async {
                        if let Some(previous) = previous {
                            // Err: the previous command finished (its sender dropped).
                            let _ = previous.await;
                        }
                        run.await
                    } => out,
                    () = ended.cancelled() => ExecOutput::fail(1, "the connection ended\n"),
                };
                drop(done);
                out
            }
            .instrument(self.span.clone()),
        ))
    }
}

impl ServerSession for Connection {
    async fn check_key(&mut self, user: &str, key: &PublicKey, verified: bool) -> bool {
        let fp = keys::fingerprint(key);
        if !verified {
            self.queries += 1;
        }
        if user == ENROLL_USER {
            // Any key may enroll: the invite token is the credential.
            if verified {
                self.enrolling = Some(key.clone());
                self.relay.record_flood(
                    self.peer.ip(),
                    Flood::EnrollLogin,
                    Event::new(kind::LOGIN, audit::OK)
                        .peer(self.peer)
                        .system(ENROLL_USER)
                        .key(ENROLL_USER, fp.as_str())
                        .detail("enroll: any key logs in; it may only redeem an invite"),
                );
            } else if self.enroll_offered.is_none() {
                self.enroll_offered = Some(fp);
            }
            return true;
        }
        if user == super::hop::HOP_USER {
            return self.check_relay_key(user, fp, verified).await;
        }
        if Name::parse(user).is_err() {
            self.refuse_login(user, fp);
            return false;
        }
        let (u, k) = (user.to_string(), key.clone());
        let found = self.relay.store.call(move |s| s.identity(&u, &k)).await;
        let identity = match found {
            Ok(Some(id)) => id,
            Ok(None) => {
                self.refuse_login(user, fp);
                return false;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "store lookup failed during login");
                let why = "login refused: the relay cannot check keys now (its database is unreachable); try again shortly";
                let mut e = audit::login_refused(
                    self.peer,
                    user,
                    audit::login_reason::STORE_UNAVAILABLE,
                    why,
                );
                e.fingerprint = Some(fp.into());
                self.relay.audit.record(e);
                self.store_down = Some(why.to_string());
                return false;
            }
        };
        if !verified {
            if !self.probed.contains(&fp) && self.probed.len() < MAX_PROBES_LISTED {
                self.probed.push(fp);
                self.probed_system = Some(identity.system.to_string());
            }
            return true;
        }
        self.probed.retain(|p| *p != fp);
        self.span.record("system", identity.system.as_str());
        self.span.record("name", identity.name.as_str());
        self.relay.audit.record(
            Event::new(kind::LOGIN, audit::OK)
                .peer(self.peer)
                .system(identity.system.as_str())
                .key(identity.name.as_str(), identity.fingerprint.as_str())
                .detail(format!("role {}", identity.role)),
        );
        self.identity = Some(identity);
        true
    }

    fn login_refusal(&mut self) -> Option<String> {
        self.store_down.take()
    }

    fn authenticated(&mut self, handle: ServerHandle) {
        self.permit = None;
        if self.enrolling.is_some() {
            let (h, ended) = (handle.clone(), self.ended.clone());
            self.relay.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(ENROLL_SESSION_TIMEOUT) => {
                        h.disconnect("enrollment session over").await;
                    }
                    // The connection is gone (at shutdown too): nothing to end.
                    _ = ended.cancelled() => {}
                }
            });
        }
        if let Some(id) = &self.identity {
            handle.share_with(self.relay.shares.share(&id.system));
            self.relay.registry.add_conn(
                self.id,
                LiveConn {
                    fingerprint: id.fingerprint.clone(),
                    system: id.system.clone(),
                    name: id.name.clone(),
                    handle: handle.clone(),
                },
            );
        }
        self.handle = Some(handle);
    }

    async fn tcpip_forward(&mut self, address: &str, port: u32) -> bool {
        let (Some(who), Some(handle)) = (&self.identity, &self.handle) else {
            return false;
        };
        self.forward_requests += 1;
        if self.forward_requests > MAX_FORWARD_REQUESTS {
            if self.forward_requests == MAX_FORWARD_REQUESTS + 1 {
                self.register_refused(address, &policy::RegisterRefusal::TooManyForwards);
                let h = handle.clone();
                self.relay.spawn(async move {
                    h.disconnect("too many forward requests").await;
                });
            }
            return false;
        }
        let checked = policy::may_register(who, address)
            .and_then(|n| policy::may_register_port(port).map(|()| n));
        let name = match checked {
            Ok(n) => n,
            Err(refusal) => {
                self.register_refused(address, &refusal);
                return false;
            }
        };
        let holder = Holder {
            conn: self.id,
            handle: handle.clone(),
            peer: self.peer,
        };
        let device = DeviceId::new(who.system.clone(), name.clone());
        let reg = self
            .relay
            .registry
            .register(&device, port, &holder, store::now());
        let took_over = reg.replaced.is_some();
        if let Some(old) = reg.replaced {
            self.relay.spawn(async move {
                old.disconnect("replaced by a new connection of the same device")
                    .await;
            });
        }
        self.relay.audit.record(
            Event::new(kind::DEVICE_UP, audit::OK)
                .peer(self.peer)
                .system(who.system.as_str())
                .key(who.name.as_str(), who.fingerprint.as_str())
                .device(name.as_str())
                .detail(format!(
                    "port {port}{}",
                    if took_over {
                        ", took over from an older connection"
                    } else {
                        ""
                    }
                )),
        );
        self.relay.status(StatusChange::Up {
            device,
            peer: self.peer,
            ports: reg.ports,
            info: self.info.clone(),
        });
        true
    }

    async fn cancel_tcpip_forward(&mut self, address: &str, port: u32) -> bool {
        let Some(who) = &self.identity else {
            return false;
        };
        let Ok(name) = Name::parse(address) else {
            return false;
        };
        let device = DeviceId::new(who.system.clone(), name.clone());
        match self.relay.registry.unregister(&device, port, self.id) {
            None => false,
            Some(gone) => {
                if gone {
                    self.relay.audit.record(
                        Event::new(kind::DEVICE_DOWN, audit::OK)
                            .system(who.system.as_str())
                            .device(name.as_str())
                            .detail("forward cancelled"),
                    );
                    self.relay.status(StatusChange::Down { device });
                }
                true
            }
        }
    }

    fn direct_tcpip(&mut self, host: &str, port: u32, channel: IncomingChannel) {
        if let Some(from) = self.hop_from.clone() {
            let (relay, host, peer) = (self.relay.clone(), host.to_string(), self.peer);
            self.tasks.spawn(
                super::hop::serve(relay, from, host, port, peer, channel)
                    .instrument(self.span.clone()),
            );
            return;
        }
        let Some(who) = self.identity.clone() else {
            return;
        };
        let relay = self.relay.clone();
        let (host, peer) = (host.to_string(), self.peer);
        self.tasks.spawn(
            async move { super::stream::stream(relay, who, host, port, peer, channel).await }
                .instrument(self.span.clone()),
        );
    }

    fn p2p(&mut self, host: &str, port: u32, channel: IncomingChannel) {
        let Some(who) = self.identity.clone() else {
            return;
        };
        let relay = self.relay.clone();
        let (host, peer) = (host.to_string(), self.peer);
        self.tasks.spawn(
            async move { super::p2p::signal(relay, who, host, port, peer, channel).await }
                .instrument(self.span.clone()),
        );
    }

    fn exec(&mut self, command: &str) -> Exec {
        let (relay, peer, command) = (self.relay.clone(), self.peer, command.to_string());
        if let Some(key) = self.enrolling.clone() {
            self.enroll_attempts += 1;
            if self.enroll_attempts > MAX_ENROLL_ATTEMPTS {
                return Exec::Done(ExecOutput::fail(
                    1,
                    format!("at most {MAX_ENROLL_ATTEMPTS} enroll attempts per connection\n"),
                ));
            }
            return self.exec_task(async move { enroll::run(&relay, &key, peer, &command).await });
        }
        let Some(who) = self.identity.clone() else {
            return Exec::Done(ExecOutput::default());
        };
        if who.role == Role::Device {
            let words: Vec<&str> = command.split_whitespace().collect();
            if words.first() == Some(&device_info::COMMAND) {
                return Exec::Done(self.device_info(&words[1..]));
            }
            let (id, ended) = (self.id, self.ended.clone());
            return self.exec_task(async move {
                let out = gateways::device_command(&relay, &who, id, &command).await;
                // The connection ended while the command ran: what it
                // registered must not outlive it (`Drop` cancels `ended`
                // before it forgets this connection's gateways).
                if ended.is_cancelled() {
                    relay.gateways.remove_conn(id);
                }
                out
            });
        }
        self.exec_task(async move { commands::run(&relay, &who, peer, &command).await })
    }
}

/// A command's place among [`MAX_COMMANDS_IN_FLIGHT`], given back when its
/// task ends or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.ended.cancel();
        let gone = self.relay.registry.remove_conn(self.id);
        self.relay.gateways.remove_conn(self.id);
        for device in gone {
            self.relay.audit.record(
                Event::new(kind::DEVICE_DOWN, audit::OK)
                    .peer(self.peer)
                    .system(device.system.as_str())
                    .device(device.name.as_str())
                    .detail("connection closed"),
            );
            self.relay.status(StatusChange::Down { device });
        }
        self.audit_unfinished_logins();
        if self.identity.is_none() && !self.refused.is_empty() {
            self.relay
                .failed_logins
                .failed(self.peer.ip(), std::time::Instant::now());
            let reason = format!("no registered key among {}", self.refused.join(", "));
            self.relay.audit.record(audit::login_refused(
                self.peer,
                self.refused_user.as_deref().unwrap_or(""),
                audit::login_reason::UNKNOWN_KEY,
                &reason,
            ));
        }
    }
}
