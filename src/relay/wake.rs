//! Waking on-demand devices over MQTT (`warren relay --mqtt URL`).
//!
//! A stream to an asleep device ([`route_waking`]) or `warren wake` asks
//! the [`Waker`]; the first request for a device publishes one `connect` on
//! its `cmd` topic and every request waits on the same wake: until the
//! device registers (then the stream is routed as usual), until it reports
//! `error` (the waiting streams get its reason), or `--wake-timeout`.
//!
//! [`run_broker`] keeps the relay's MQTT session: it subscribes to every
//! device's `state` topic (again after every reconnect), stores each
//! on-demand device's last report, passes errors to waiting wakes and
//! audits sleeps and idle teardowns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Relay;
use super::router::{self, Route};
use crate::audit::{self, Event};
use crate::mqtt::{self, BrokerSettings, Command, EventLoop, Op, QoS, Report, State, Topics};
use crate::policy::Refusal;
use crate::protocol::{Backoff, DeviceId};
use crate::ssh::server::ServerHandle;
use crate::store::Identity;

/// How long a stream waits for an asleep device, unless `--wake-timeout` says.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Audit kinds of on-demand devices.
pub mod kind {
    /// A wake request: who, which device, time to online, result.
    pub const WAKE: &str = "wake";
    /// A sleep request (`warren sleep`).
    pub const SLEEP_REQUEST: &str = "sleep_request";
    /// A device reported that it went to sleep (on a `disconnect`).
    pub const SLEEP: &str = "device_sleep";
    /// A device reported that it went to sleep after its idle timeout.
    pub const IDLE_TEARDOWN: &str = "idle_teardown";
}

/// `--mqtt` and its companions, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeOptions {
    pub broker: BrokerSettings,
    pub topics: Topics,
    pub timeout: Duration,
}

/// How a wake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeOutcome {
    Online {
        took: Duration,
    },
    /// The device reported `error` with this reason, or the broker could
    /// not take the command.
    Failed {
        reason: String,
    },
    TimedOut {
        waited: Duration,
    },
}

impl WakeOutcome {
    pub fn refusal(&self, device: &DeviceId) -> Option<Refusal> {
        let device = device.name.clone();
        match self {
            WakeOutcome::Online { .. } => None,
            WakeOutcome::Failed { reason } => Some(Refusal::WakeFailed {
                device,
                reason: reason.clone(),
            }),
            WakeOutcome::TimedOut { waited } => Some(Refusal::WakeTimeout {
                device,
                waited: *waited,
            }),
        }
    }
}

/// One wake in progress, shared by everyone who waits on it.
struct Pending {
    /// An error the device reported while waking.
    error: watch::Sender<Option<String>>,
    done: watch::Sender<Option<WakeOutcome>>,
}

/// Publishes wake and sleep commands and tracks wakes in progress.
pub struct Waker {
    client: mqtt::AsyncClient,
    topics: Topics,
    timeout: Duration,
    pending: Mutex<HashMap<DeviceId, Arc<Pending>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// The TLS bridge of an `mqtts://` broker, alive as long as the client.
    _bridge: Option<mqtt::tls::Bridge>,
}

impl Waker {
    /// The waker and the event loop that [`run_broker`] must drive.
    pub fn new(opts: &WakeOptions) -> anyhow::Result<(Waker, EventLoop)> {
        let mut id = [0u8; 6];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let client_id = format!("warren-relay-{}", data_encoding::HEXLOWER.encode(&id));
        let session = opts.broker.session(
            mqtt::SessionOptions {
                client_id,
                persistent: false,
                will: None,
            },
            256,
        )?;
        Ok((
            Waker {
                _bridge: session.bridge,
                client: session.client,
                topics: opts.topics.clone(),
                timeout: opts.timeout,
                pending: Mutex::default(),
                next_id: std::sync::atomic::AtomicU64::new(1),
            },
            session.eventloop,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Arc<Pending>>> {
        // Inserts and removes only: a poisoned map is still whole.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a wake waits (`--wake-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a wake of `device` is in progress.
    pub fn is_waking(&self, device: &DeviceId) -> bool {
        self.lock().contains_key(device)
    }

    /// Publishes a command to `device`, expiring after [`mqtt::COMMAND_EXPIRY`].
    pub async fn command(&self, device: &DeviceId, op: Op) -> anyhow::Result<String> {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cmd = Command {
            op,
            id: format!("relay-{}-{n}", std::process::id()),
        };
        let topic = self.topics.cmd(&device.system, &device.name);
        self.client
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                cmd.to_json(),
                mqtt::expiring(mqtt::COMMAND_EXPIRY),
            )
            .await
            .map_err(|e| anyhow::anyhow!("the MQTT client did not take the command: {e}"))?;
        Ok(cmd.id)
    }

    /// A device reported `report`: an error ends its wake.
    fn reported(&self, device: &DeviceId, report: &Report) {
        if report.state != State::Error {
            return;
        }
        if let Some(p) = self.lock().get(device) {
            let reason = report
                .reason
                .clone()
                .unwrap_or_else(|| "the device reported an error".into());
            p.error.send_replace(Some(reason));
        }
    }
}

/// Wakes `device` for `who` (a key name, for the audit) and waits until it
/// is online, failed, or timed out. Many callers for one device share one
/// wake and one `connect`.
pub async fn wake(relay: &Relay, waker: &Arc<Waker>, device: &DeviceId, who: &str) -> WakeOutcome {
    let (pending, first) = {
        let mut map = waker.lock();
        match map.get(device) {
            Some(p) => (p.clone(), false),
            None => {
                let p = Arc::new(Pending {
                    error: watch::Sender::new(None),
                    done: watch::Sender::new(None),
                });
                map.insert(device.clone(), p.clone());
                (p, true)
            }
        }
    };
    let mut done = pending.done.subscribe();
    if first {
        let Some(me) = relay.me.upgrade() else {
            waker.lock().remove(device);
            return WakeOutcome::Failed {
                reason: "relay shutting down".into(),
            };
        };
        relay.spawn(drive(
            me,
            waker.clone(),
            device.clone(),
            pending,
            who.to_string(),
        ));
    }
    match done.wait_for(Option::is_some).await {
        Ok(o) => o.clone().unwrap_or(WakeOutcome::Failed {
            reason: "relay shutting down".into(),
        }),
        Err(_) => WakeOutcome::Failed {
            reason: "relay shutting down".into(),
        },
    }
}

/// Who publishes a wake's `connect`.
enum Claim {
    /// One relay: this one, as always.
    Alone,
    /// In a cluster, this relay claimed the wake (at this time, ms).
    Mine(i64),
    /// Another relay of the cluster claimed it: this one only waits.
    Other,
}

/// In a cluster, one relay claims each wake in the database, so a device
/// asked for through several relays at once gets one `connect`.
async fn claim(relay: &Relay, device: &DeviceId, timeout: Duration) -> Claim {
    if relay.store().postgres().is_none() {
        return Claim::Alone;
    }
    let (s, n) = (device.system.to_string(), device.name.to_string());
    let claimed = relay
        .store()
        .call(move |st| match st.postgres() {
            Some(pg) => pg.claim_wake(&s, &n, timeout).map(|c| c.ok_or(())),
            None => Ok(Err(())),
        })
        .await;
    match claimed {
        Ok(Ok(sent)) => Claim::Mine(sent),
        Ok(Err(())) => Claim::Other,
        Err(e) => {
            // Without the database, wake anyway: a second `connect` to an
            // awake device changes nothing.
            tracing::warn!(error = %format!("{e:#}"), "claiming a wake in the cluster");
            Claim::Alone
        }
    }
}

/// One wake, from `connect` to its outcome, which it audits and hands to
/// every waiter.
async fn drive(
    relay: Arc<Relay>,
    waker: Arc<Waker>,
    device: DeviceId,
    pending: Arc<Pending>,
    who: String,
) {
    let started = Instant::now();
    let mut errors = pending.error.subscribe();
    let claim = claim(&relay, &device, waker.timeout).await;
    let sent = match claim {
        Claim::Other => Ok("sent by another relay".to_string()),
        Claim::Alone | Claim::Mine(_) => waker.command(&device, Op::Connect).await,
    };
    let outcome = match sent {
        Err(e) => WakeOutcome::Failed {
            reason: format!("{e:#}"),
        },
        Ok(id) => {
            tracing::info!(device = %device, %id, who, "wake: connect published");
            until_online(&relay, &waker, &device, &mut errors, started).await
        }
    };
    waker.lock().remove(&device);
    if let Claim::Mine(sent) = claim {
        let (s, n) = (device.system.to_string(), device.name.to_string());
        let ended = relay
            .store()
            .call(move |st| match st.postgres() {
                Some(pg) => pg.end_wake(&s, &n, sent),
                None => Ok(()),
            })
            .await;
        if let Err(e) = ended {
            tracing::warn!(error = %format!("{e:#}"), "ending a wake claim (it expires)");
        }
    }
    let mut event = wake_event(&device, &who, &outcome, started.elapsed());
    if matches!(claim, Claim::Other) {
        let detail = event.detail.take().unwrap_or_default();
        event = event.detail(format!(
            "{detail}; the connect was sent by another relay of the cluster"
        ));
    }
    relay.audit().record(event);
    pending.done.send_replace(Some(outcome));
}

/// Waits until `device` is online (here, or in a cluster on another relay),
/// reports an error, or the wake timeout passes.
async fn until_online(
    relay: &Arc<Relay>,
    waker: &Waker,
    device: &DeviceId,
    errors: &mut watch::Receiver<Option<String>>,
    started: Instant,
) -> WakeOutcome {
    let mut registry = relay.registry().watch();
    let deadline = tokio::time::sleep(waker.timeout);
    tokio::pin!(deadline);
    let cluster = relay.store().postgres().map(|pg| pg.change_notifier());
    loop {
        registry.borrow_and_update();
        // Enabled before the checks, so a claim between them is not missed.
        let mut claimed = cluster.as_ref().map(|n| Box::pin(n.notified()));
        if let Some(c) = claimed.as_mut() {
            c.as_mut().enable();
        }
        let here = relay
            .registry()
            .lookup(&device.system, &device.name)
            .is_some();
        if here
            || (cluster.is_some()
                && super::hop::holder(relay, &device.system, device.name.as_str())
                    .await
                    .is_some())
        {
            return WakeOutcome::Online {
                took: started.elapsed(),
            };
        }
        if let Some(reason) = errors.borrow_and_update().clone() {
            return WakeOutcome::Failed { reason };
        }
        let elsewhere = async {
            match claimed {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = registry.changed() => {}
            _ = errors.changed() => {}
            _ = elsewhere => {}
            _ = &mut deadline => return WakeOutcome::TimedOut { waited: waker.timeout },
            _ = relay.shutting_down().cancelled() => return WakeOutcome::Failed {
                reason: "relay shutting down".into(),
            },
        }
    }
}

fn wake_event(device: &DeviceId, who: &str, outcome: &WakeOutcome, took: Duration) -> Event {
    let (result, detail) = match outcome {
        WakeOutcome::Online { .. } => (audit::OK, "online".to_string()),
        WakeOutcome::Failed { reason } => ("failed", reason.clone()),
        WakeOutcome::TimedOut { waited } => ("failed", format!("not online within {waited:?}")),
    };
    let mut e = Event::new(kind::WAKE, result)
        .system(device.system.as_str())
        .key_name(who)
        .device(device.name.as_str())
        .detail(detail);
    e.duration_ms = Some(took.as_millis() as u64);
    e
}

/// Routes a stream as [`router::route`] does, but wakes an asleep
/// on-demand device first rather than refusing it as offline.
pub(super) async fn route_waking(
    relay: &Arc<Relay>,
    who: &Identity,
    host: &str,
    port: u32,
) -> Result<Route<ServerHandle>, Refusal> {
    let first = router::route(relay.as_ref(), who, host, port).await;
    let Err(Refusal::Offline { device, last_seen }) = first else {
        return first;
    };
    let id = DeviceId::new(who.system.clone(), device.clone());
    let (s, n) = (id.system.to_string(), id.name.to_string());
    let on_demand = relay
        .store()
        .call(move |st| st.on_demand_device(&s, &n))
        .await;
    if !matches!(on_demand, Ok(Some(_))) {
        return Err(Refusal::Offline { device, last_seen });
    }
    // Awake on another relay of the cluster: the stream hops there.
    if super::hop::holder(relay, &who.system, device.as_str())
        .await
        .is_some()
    {
        return Err(Refusal::Offline { device, last_seen });
    }
    let Some(waker) = relay.waker() else {
        return Err(Refusal::CannotWake { device });
    };
    let outcome = wake(relay, waker, &id, who.name.as_str()).await;
    if let Some(refusal) = outcome.refusal(&id) {
        return Err(refusal);
    }
    router::route(relay.as_ref(), who, host, port).await
}

/// Drives the relay's MQTT session until shutdown: subscribes to every
/// state topic after each connect, and takes the reports.
pub(super) async fn run_broker(relay: Arc<Relay>, waker: Arc<Waker>, mut eventloop: EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut backoff = Backoff::new();
    let mut down = false;
    loop {
        let event = tokio::select! {
            _ = relay.shutting_down().cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(mqtt::Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Backoff::new();
                tracing::info!(was_down = down, "MQTT broker connected");
                down = false;
                // The client does not restore subscriptions itself.
                let topic = waker.topics.all_states();
                if let Err(e) = waker.client.try_subscribe(topic, QoS::AtLeastOnce) {
                    tracing::warn!("MQTT subscribe not queued: {e}");
                }
            }
            Ok(mqtt::Event::Incoming(Packet::Publish(p))) => {
                take_report(&relay, &waker, &p.topic, &p.payload, p.retain)
            }
            Ok(_) => {}
            Err(e) => {
                let delay = backoff.next_delay();
                if !down {
                    tracing::warn!(retry_in = ?delay, "MQTT broker unreachable: {e}");
                }
                down = true;
                tokio::select! {
                    _ = relay.shutting_down().cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A message on a state topic: stored for a known on-demand device, handed
/// to a wake in progress, and audited when it says the device went to sleep.
fn take_report(relay: &Arc<Relay>, waker: &Waker, topic: &[u8], payload: &[u8], retained: bool) {
    let Some((system, name)) = std::str::from_utf8(topic)
        .ok()
        .and_then(|t| waker.topics.parse_state(t))
    else {
        return;
    };
    let report = match Report::parse(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%system, %name, "ignored a malformed state report: {e}");
            return;
        }
    };
    let device = DeviceId::new(system, name);
    waker.reported(&device, &report);
    let r = report.clone();
    let (s, n) = (device.system.to_string(), device.name.to_string());
    let relay2 = relay.clone();
    relay.spawn(async move {
        let known = relay2
            .store()
            .call(move |st| st.report_state(&s, &n, r.state.as_str(), r.reason.as_deref(), &r.at))
            .await;
        match known {
            // A retained message is an old state, not something that just happened.
            Ok(true) if !retained && report.state == State::Asleep => {
                let reason = report.reason.unwrap_or_default();
                let k = if reason.starts_with("idle") {
                    kind::IDLE_TEARDOWN
                } else {
                    kind::SLEEP
                };
                relay2.audit().record(
                    Event::new(k, audit::OK)
                        .system(device.system.as_str())
                        .device(device.name.as_str())
                        .detail(reason),
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!("storing a reported state: {e:#}"),
        }
    });
}
