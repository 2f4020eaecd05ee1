//! An on-demand agent (`[on_demand]` in its config): asleep, it holds only
//! an MQTT session; a `connect` command wakes it and it dials the relay
//! exactly as a normal agent; `disconnect`, or `idle_timeout` without a
//! stream, puts it back to sleep. It reports every change, retained, on its
//! `state` topic, with a last will that says `offline`.
//!
//! Two tasks: [`broker`] owns the MQTT event loop (reconnects with
//! [`Backoff`], re-subscribes and re-publishes the current state after
//! every connect, passes commands on); [`run`] is the state machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Activity, AgentEvent, AgentSettings, Links, SharedAllow, gateway};
use crate::mqtt::{
    self, BrokerSettings, BrokerUrl, Command, Event, EventLoop, Op, QoS, Report, SessionOptions,
    State, Topics,
};
use crate::protocol::Backoff;

/// Idle time after which an awake on-demand agent sleeps, unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Commands waiting for the state machine; more are dropped (and logged):
/// nobody needs a hundred `connect`s in a row.
const COMMAND_QUEUE: usize = 16;

/// The `[on_demand]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandFile {
    /// `mqtt://HOST:PORT`, or `mqtts://` for TLS.
    pub broker: String,
    pub username: Option<String>,
    /// File holding the broker password (never the password itself).
    pub password_file: Option<PathBuf>,
    /// No stream for this long: disconnect and sleep ("10m").
    pub idle_timeout: Option<String>,
    /// A private CA for `mqtts://` (PEM).
    pub ca: Option<PathBuf>,
    /// A TLS client certificate (PEM) and its key.
    pub cert: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// First topic levels (default "warren").
    pub topic_prefix: Option<String>,
}

/// A validated `[on_demand]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDemand {
    pub broker: BrokerSettings,
    pub idle_timeout: Duration,
    pub topics: Topics,
}

impl OnDemand {
    pub fn from_file(f: &OnDemandFile, base: &Path) -> Result<OnDemand> {
        let url = BrokerUrl::parse(&f.broker)?;
        let password = match &f.password_file {
            Some(p) => Some(mqtt::read_password(&base.join(p))?),
            None => None,
        };
        if password.is_some() && f.username.is_none() {
            bail!("password_file without username");
        }
        let client_cert = match (&f.cert, &f.key_file) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => bail!("cert and key_file go together"),
        };
        let idle_timeout = match &f.idle_timeout {
            Some(s) => humantime::parse_duration(s)
                .with_context(|| format!("idle_timeout {s:?} (write it like \"10m\")"))?,
            None => DEFAULT_IDLE_TIMEOUT,
        };
        if idle_timeout < Duration::from_secs(1) {
            bail!("idle_timeout must be at least 1s");
        }
        let topics = match &f.topic_prefix {
            Some(p) => Topics::new(p)?,
            None => Topics::default(),
        };
        let broker = BrokerSettings {
            url,
            username: f.username.clone(),
            password,
            ca: f.ca.as_ref().map(|c| base.join(c)),
            client_cert,
        };
        // Certificates are read now, so a bad path is a config error.
        broker.check()?;
        Ok(OnDemand {
            broker,
            idle_timeout,
            topics,
        })
    }
}

/// What an on-demand agent does, for tests and embedding (the log says the
/// same in words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDemandEvent {
    /// A state was reported (and published, once the broker takes it).
    State {
        state: State,
        reason: Option<String>,
    },
    /// A command was taken.
    Command(Command),
    /// A message on the command topic was ignored (malformed, unknown).
    Ignored { why: String },
    /// The broker connection came up (`true`) or went down.
    Broker { up: bool, detail: String },
    /// The relay session's own events.
    Agent(AgentEvent),
}

type Emit = Option<mpsc::UnboundedSender<OnDemandEvent>>;

fn emit(events: &Emit, e: OnDemandEvent) {
    if let Some(tx) = events {
        let _ = tx.send(e);
    }
}

/// Runs an on-demand agent until `shutdown`.
pub async fn run(
    mut settings: AgentSettings,
    od: OnDemand,
    shutdown: CancellationToken,
    events: Emit,
) -> Result<()> {
    let (system, name) = (settings.system.clone(), settings.name.clone());
    let state_topic = od.topics.state(&system, &name);
    let cmd_topic = od.topics.cmd(&system, &name);
    let will = Report::now(State::Offline, None).to_json().into_bytes();
    let mqtt::Session {
        client,
        eventloop,
        bridge: _bridge,
    } = od.broker.session(
        SessionOptions {
            client_id: format!("warren-{system}-{name}"),
            persistent: true,
            will: Some((state_topic.clone(), will)),
        },
        32,
    )?;
    let (report, reports) = watch::channel(Report::now(State::Asleep, None));
    let (cmd_tx, mut cmds) = mpsc::channel(COMMAND_QUEUE);
    let link = BrokerLink {
        client: client.clone(),
        cmd_topic,
        state_topic,
        reports,
        commands: cmd_tx,
        events: events.clone(),
    };
    let stop_broker = CancellationToken::new();
    let broker_task = tokio::spawn(broker(eventloop, link, stop_broker.clone()));
    tracing::info!(broker = %od.broker.url, device = %name, "on-demand: asleep until a connect command");

    let mut life = Life::new(&settings, &shutdown);
    let set = |state: State, reason: Option<String>| {
        tracing::info!(state = %state, reason = reason.as_deref().unwrap_or(""), "on-demand state");
        report.send_replace(Report::now(state, reason.clone()));
        emit(&events, OnDemandEvent::State { state, reason });
    };
    // Registers once at start, so the relay lists the device (and a refused
    // key or a wrong host key shows at once, not at the first wake).
    awake(
        &mut settings,
        &od,
        &mut life,
        Mode::RegisterOnly,
        &mut cmds,
        &set,
        &events,
    )
    .await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd.op {
                    Op::Connect => {
                        awake(&mut settings, &od, &mut life, Mode::Serve, &mut cmds, &set, &events).await;
                    }
                    Op::Disconnect => tracing::info!(id = %cmd.id, "disconnect: already asleep"),
                }
            }
        }
    }
    goodbye(&client, od.topics.state(&system, &name)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), broker_task).await;
    stop_broker.cancel();
    Ok(())
}

/// A clean goodbye: the retained state says offline (the will is then not
/// needed), and the session ends with a DISCONNECT.
async fn goodbye(client: &mqtt::AsyncClient, state_topic: String) {
    let report = Report::now(State::Offline, Some("agent stopped".into()));
    let _ = client
        .publish(state_topic, QoS::AtLeastOnce, true, report.to_json())
        .await;
    let _ = client.disconnect().await;
}

/// What a normal agent keeps across connections, made once.
struct Life<'a> {
    allow: SharedAllow,
    gateway: Arc<gateway::GatewayState>,
    accepted: mpsc::Receiver<gateway::Accepted>,
    config: watch::Receiver<AgentSettings>,
    _keep: watch::Sender<AgentSettings>,
    activity: Arc<Activity>,
    shutdown: &'a CancellationToken,
}

impl<'a> Life<'a> {
    fn new(settings: &AgentSettings, shutdown: &'a CancellationToken) -> Life<'a> {
        let (keep, config) = watch::channel(settings.clone());
        Life {
            allow: Arc::new(std::sync::RwLock::new(Arc::new(settings.allow.clone()))),
            gateway: Arc::new(gateway::GatewayState::new(
                settings.name.clone(),
                settings.gateway.clone(),
                None,
            )),
            accepted: gateway::start_listens(&settings.gateway.listens, shutdown),
            config,
            _keep: keep,
            activity: Activity::new(),
            shutdown,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Register, then sleep at once (at start).
    RegisterOnly,
    /// Serve streams until told to sleep or idle.
    Serve,
}

/// One wake: connect to the relay, serve, and go back to sleep; reports
/// each step.
async fn awake(
    settings: &mut AgentSettings,
    od: &OnDemand,
    life: &mut Life<'_>,
    mode: Mode,
    cmds: &mut mpsc::Receiver<Command>,
    set: &impl Fn(State, Option<String>),
    events: &Emit,
) {
    set(State::Connecting, None);
    let stop = life.shutdown.child_token();
    let (online_tx, mut online) = watch::channel(false);
    let online_idle = online_tx.subscribe();
    let activity = life.activity.clone();
    let on_event = |e: AgentEvent| {
        if e == AgentEvent::Online {
            activity.reset();
            online_tx.send_replace(true);
            if mode == Mode::Serve {
                set(State::Online, None);
            }
        }
        emit(events, OnDemandEvent::Agent(e));
    };
    let links = Links {
        allow: &life.allow,
        gateway: &life.gateway,
        accepted: &mut life.accepted,
        config: &mut life.config,
        activity: &life.activity,
    };
    // Every wake starts at the first relay of a cluster's list.
    let session = super::session(settings, links, &on_event, &stop, 0);
    tokio::pin!(session);
    let mut sleep_reason: Option<String> = None;
    let ended = loop {
        tokio::select! {
            reason = &mut session => break reason,
            _ = online.wait_for(|up| *up), if mode == Mode::RegisterOnly && sleep_reason.is_none() => {
                sleep_reason = Some("registered at start".into());
                stop.cancel();
            }
            _ = idle(&life.activity, od.idle_timeout, online_idle.clone()), if mode == Mode::Serve && sleep_reason.is_none() => {
                let why = format!("idle for {}", humantime::format_duration(od.idle_timeout));
                tracing::info!("{why}: going to sleep");
                sleep_reason = Some(why);
                stop.cancel();
            }
            cmd = cmds.recv(), if sleep_reason.is_none() => match cmd {
                Some(c) if c.op == Op::Disconnect => {
                    tracing::info!(id = %c.id, "disconnect command: going to sleep");
                    sleep_reason = Some("disconnect command".into());
                    stop.cancel();
                }
                Some(c) => tracing::info!(id = %c.id, "connect: already awake"),
                None => stop.cancel(),
            },
        }
    };
    if life.shutdown.is_cancelled() {
        return;
    }
    let was_online = *online.borrow();
    match (sleep_reason, was_online) {
        (Some(why), _) => set(State::Asleep, Some(why)),
        (None, true) => set(
            State::Asleep,
            Some(format!("connection to the relay ended: {ended}")),
        ),
        (None, false) => set(State::Error, Some(ended)),
    }
}

/// Returns once the session is online and no stream has been open for `timeout`.
async fn idle(activity: &Activity, timeout: Duration, mut online: watch::Receiver<bool>) {
    if online.wait_for(|up| *up).await.is_err() {
        return std::future::pending().await;
    }
    let mut changes = activity.watch();
    loop {
        changes.borrow_and_update();
        match activity.idle_since() {
            Some(since) => {
                let deadline = tokio::time::Instant::from_std(since + timeout);
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        if activity.idle_since() == Some(since) {
                            return;
                        }
                    }
                    _ = changes.changed() => {}
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// What the broker task shares with the state machine.
struct BrokerLink {
    client: mqtt::AsyncClient,
    cmd_topic: String,
    state_topic: String,
    reports: watch::Receiver<Report>,
    commands: mpsc::Sender<Command>,
    events: Emit,
}

impl BrokerLink {
    fn publish_state(&mut self) {
        let json = self.reports.borrow_and_update().to_json();
        // Queued for the event loop; after a reconnect the current state is
        // published again anyway.
        if let Err(e) = self
            .client
            .try_publish(&self.state_topic, QoS::AtLeastOnce, true, json)
        {
            tracing::debug!("state not queued: {e}");
        }
    }

    fn take(&self, topic: &[u8], payload: &[u8]) {
        if topic != self.cmd_topic.as_bytes() {
            return;
        }
        match Command::parse(payload) {
            Ok(cmd) => {
                tracing::info!(op = ?cmd.op, id = %cmd.id, "command");
                emit(&self.events, OnDemandEvent::Command(cmd.clone()));
                if self.commands.try_send(cmd).is_err() {
                    tracing::warn!("too many commands waiting; dropped one");
                }
            }
            Err(why) => {
                tracing::warn!(topic = %self.cmd_topic, "ignored a malformed command: {why}");
                emit(&self.events, OnDemandEvent::Ignored { why });
            }
        }
    }
}

/// Drives the MQTT session until `stop`: subscribes and publishes the
/// current state after every (re)connect, hands commands on, and retries
/// with [`Backoff`] while the broker is down.
async fn broker(mut eventloop: EventLoop, mut link: BrokerLink, stop: CancellationToken) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut backoff = Backoff::new();
    let mut down: Option<String> = None;
    let mut connected = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            changed = link.reports.changed(), if connected => {
                if changed.is_err() {
                    return;
                }
                link.publish_state();
                continue;
            }
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                backoff = Backoff::new();
                let detail = match down.take() {
                    Some(was) => format!("broker back after: {was}"),
                    None => "broker connected".to_string(),
                };
                tracing::info!("{detail}");
                emit(&link.events, OnDemandEvent::Broker { up: true, detail });
                // The client does not restore subscriptions itself.
                if let Err(e) = link.client.try_subscribe(&link.cmd_topic, QoS::AtLeastOnce) {
                    tracing::warn!("subscribe not queued: {e}");
                }
                link.publish_state();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => link.take(&p.topic, &p.payload),
            // Our own goodbye: no reconnect after it.
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                connected = false;
                let why = e.to_string();
                let delay = backoff.next_delay();
                if down.is_none() {
                    tracing::warn!(retry_in = ?delay, "broker unreachable: {why}");
                    emit(
                        &link.events,
                        OnDemandEvent::Broker {
                            up: false,
                            detail: why.clone(),
                        },
                    );
                } else {
                    tracing::debug!(retry_in = ?delay, "broker still unreachable: {why}");
                }
                down = Some(why);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
