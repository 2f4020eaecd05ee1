//! On-demand devices with a real MQTT broker (mosquitto, its own port,
//! password file and ACL): a stream to an asleep device wakes it through
//! the broker, the device reports its state, sleeps again when idle, and
//! every failure comes back to the controller as the device's reason.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::mosquitto::{Mosquitto, PAST_EXPIRY, within};
use common::openssh::{Ran, Sshd, login_user, run};
use common::*;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren::admin::{LiveRelay, status};
use warren::agent::on_demand::{self, OnDemand, OnDemandEvent};
use warren::mqtt::{BrokerSettings, BrokerUrl, Op, State, Topics};
use warren::protocol::Role;
use warren::relay::RelayOptions;
use warren::relay::wake::{WakeOptions, kind};
use warren::ssh::keys::PrivateKey;
use warren::store::AuditQuery;

const IDLE: Duration = Duration::from_secs(2);

fn broker_settings(b: &Mosquitto, user: &str) -> BrokerSettings {
    BrokerSettings {
        url: BrokerUrl::parse(&b.url()).unwrap(),
        username: Some(user.into()),
        password: Some(common::mosquitto::password(user).into()),
        ca: None,
        client_cert: None,
    }
}

/// A broker, a relay that wakes through it, a controller key for stock ssh.
struct World {
    broker: Mosquitto,
    relay: TestRelay,
    dir: tempfile::TempDir,
    alice: PathBuf,
}

impl World {
    async fn start() -> World {
        let broker = Mosquitto::start().await;
        Self::with_broker(broker, None).await
    }

    async fn with_broker(broker: Mosquitto, relay_broker: Option<BrokerSettings>) -> World {
        let wake = WakeOptions {
            broker: relay_broker.unwrap_or_else(|| broker_settings(&broker, "relay")),
            topics: Topics::default(),
            timeout: Duration::from_secs(20),
        };
        let relay = TestRelay::start_with(RelayOptions {
            store_poll: Duration::from_millis(100),
            wake: Some(wake),
            ..Default::default()
        })
        .await;
        relay.add_system("tau");
        let dir = tempfile::tempdir().unwrap();
        let alice = relay.add_key_file(dir.path(), "tau", Role::Controller, "alice");
        World {
            broker,
            relay,
            dir,
            alice,
        }
    }

    fn on_demand(&self, user: &str) -> OnDemand {
        OnDemand {
            broker: broker_settings(&self.broker, user),
            idle_timeout: IDLE,
            topics: Topics::default(),
        }
    }

    /// Starts on-demand agent `dev` serving `allow`, with `od`.
    /// `dev` on demand, its port 22 an echo server, once it is asleep.
    async fn asleep_echo_device(&self, dev: &str) -> Sleeper {
        let echo = echo_server().await;
        let key = self.relay.add_key("tau", Role::Device, dev);
        let mut sleeper = self.sleeper(
            dev,
            key,
            &[format!("22=127.0.0.1:{echo}")],
            self.on_demand(dev),
        );
        sleeper.state(State::Asleep).await;
        sleeper
    }

    fn sleeper(&self, dev: &str, key: Arc<PrivateKey>, allow: &[String], od: OnDemand) -> Sleeper {
        let mut settings = self.relay.agent_settings("tau", dev, key, allow);
        settings.on_demand = Some(od.clone());
        Sleeper::start(settings, od)
    }

    /// Lists dev as the relay shows it (`ls`), waiting until its STATUS is `want`.
    async fn wait_listed(&self, dev: &str, want: &str) -> status::DeviceStatus {
        let mut written = self.relay.relay.status_written();
        let mut audit = self.relay.relay.audit().watch();
        let find = async {
            loop {
                let live: &dyn LiveRelay = self.relay.relay.as_ref();
                let list = status::list(self.relay.store(), Some(live), Some("tau".into()))
                    .await
                    .unwrap();
                if let Some(d) = list.into_iter().find(|d| d.name == dev && d.status == want) {
                    return d;
                }
                tokio::select! {
                    _ = written.changed() => {}
                    _ = audit.changed() => {}
                }
            }
        };
        within(&format!("{dev} listed as {want}"), find).await
    }

    fn audit(&self, kind: &str) -> AuditQuery {
        audit_of(kind, 50)
    }
}

/// An on-demand agent running in this process; stopped when dropped.
struct Sleeper {
    events: mpsc::UnboundedReceiver<OnDemandEvent>,
    stop: CancellationToken,
}

impl Sleeper {
    fn start(settings: warren::agent::AgentSettings, od: OnDemand) -> Sleeper {
        let (tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = on_demand::run(settings, od, s, Some(tx)).await {
                panic!("on-demand agent: {e:#}");
            }
        });
        Sleeper { events, stop }
    }

    /// Waits for the first event that `pick` takes.
    async fn until<T>(&mut self, what: &str, pick: impl Fn(&OnDemandEvent) -> Option<T>) -> T {
        let events = &mut self.events;
        within(what, async {
            loop {
                let e = events.recv().await.expect("agent running");
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
        })
        .await
    }

    /// Waits until the agent reports `want`; returns the reason.
    async fn state(&mut self, want: State) -> Option<String> {
        self.until(&format!("state {want}"), |e| match e {
            OnDemandEvent::State { state, reason } if *state == want => Some(reason.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next command taken or ignored: Ok(id) or Err(why).
    async fn command(&mut self) -> Result<(Op, String), String> {
        self.until("a command", |e| match e {
            OnDemandEvent::Command(c) => Some(Ok((c.op, c.id.clone()))),
            OnDemandEvent::Ignored { why } => Some(Err(why.clone())),
            _ => None,
        })
        .await
    }

    async fn broker(&mut self, up: bool) -> String {
        self.until(&format!("broker up={up}"), |e| match e {
            OnDemandEvent::Broker { up: u, detail } if *u == up => Some(detail.clone()),
            _ => None,
        })
        .await
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `ssh -J tau@relay user@dev CMD` with stock ssh (a config file: `-J`
/// does not pass `-i` to the jump host).
async fn ssh_jump(w: &World, sshd: &Sshd, dev: &str, cmd: &str) -> Ran {
    let user = login_user();
    let known = write_file(
        w.dir.path(),
        "known_hosts",
        &format!("{}\n{dev} {}\n", w.relay.known_hosts_line(), sshd.host_pub),
    );
    let config = write_file(
        w.dir.path(),
        "ssh_config",
        &format!(
            "Host 127.0.0.1\n  IdentityFile {alice}\n\
             Host {dev}\n  User {user}\n  IdentityFile {userkey}\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {known}\n  ConnectTimeout 30\n",
            alice = w.alice.display(),
            userkey = sshd.user_key.display(),
            known = known.display(),
        ),
    );
    run(
        Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .arg("-J")
            .arg(format!("tau@127.0.0.1:{}", w.relay.addr.port()))
            .arg(format!("{user}@{dev}"))
            .arg(cmd),
        Duration::from_secs(90),
    )
    .await
}

#[tokio::test]
async fn ssh_jump_wakes_an_asleep_device_which_sleeps_again_when_idle() {
    let w = World::start().await;
    let sshd = Sshd::start().await;
    let mut states = w.broker.subscribe("admin", "warren/tau/dev1/state").await;
    let key = w.relay.add_key("tau", Role::Device, "dev1");
    let allow = [format!("22=127.0.0.1:{}", sshd.port)];
    let mut dev = w.sleeper("dev1", key, &allow, w.on_demand("dev1"));

    // It registers once at start, so the relay lists it, asleep.
    dev.state(State::Asleep).await;
    let listed = w.wait_listed("dev1", "asleep").await;
    assert!(!listed.online);
    states.until_state("asleep").await;

    let r = ssh_jump(&w, &sshd, "dev1", "echo reached $(hostname)").await;
    assert!(r.ok, "ssh -J to an asleep device failed: {}", r.stderr);
    assert!(r.stdout_str().starts_with("reached "), "{}", r.stdout_str());
    let seen = states.until_state("online").await;
    let names: Vec<&str> = seen.iter().filter_map(|v| v["state"].as_str()).collect();
    assert!(
        names.ends_with(&["connecting", "online"]),
        "state topic saw {names:?}"
    );
    let online = seen.last().unwrap();
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    humantime::parse_rfc3339(online["at"].as_str().unwrap()).unwrap();

    // No stream for IDLE: asleep again, on the topic and in `ls`.
    let slept = states.until_state("asleep").await;
    let reason = slept.last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.starts_with("idle"), "{reason}");
    // Audit: the wake (who, device, time to online, result) and the teardown.
    let wake = w.relay.wait_audit(&w.audit(kind::WAKE), |_| true).await;
    assert_eq!(wake.result, "ok");
    assert_eq!(wake.key.as_deref(), Some("alice"));
    assert_eq!(wake.device.as_deref(), Some("dev1"));
    assert!(wake.duration_ms.is_some_and(|ms| ms < 20_000), "{wake:?}");
    let idle = w
        .relay
        .wait_audit(&w.audit(kind::IDLE_TEARDOWN), |_| true)
        .await;
    assert_eq!(idle.device.as_deref(), Some("dev1"));
    let listed = w.wait_listed("dev1", "asleep").await;
    let od = listed.on_demand.expect("on-demand info in ls");
    assert_eq!(od.state.as_deref(), Some("asleep"));
    assert_eq!(od.reason.as_deref(), Some(reason.as_str()));
}

#[tokio::test]
async fn many_streams_to_one_asleep_device_cause_one_wake() {
    let w = World::start().await;
    let mut dev = w.asleep_echo_device("dev1").await;
    w.wait_listed("dev1", "asleep").await;

    let alice = w.relay.add_key("tau", Role::Controller, "bob");
    let conn = w.relay.controller("tau", alice).await;
    let (a, b, c) = tokio::join!(
        echo_through(&conn, "dev1", 22, b"one"),
        echo_through(&conn, "dev1", 22, b"two"),
        echo_through(&conn, "dev1", 22, b"three"),
    );
    assert_eq!(a.unwrap(), b"one");
    assert_eq!(b.unwrap(), b"two");
    assert_eq!(c.unwrap(), b"three");

    let wakes = w
        .relay
        .wait_audit_for(&w.audit(kind::WAKE), |e| (!e.is_empty()).then_some(e))
        .await;
    assert_eq!(wakes.len(), 1, "one wake for three streams: {wakes:?}");
    // The agent took one connect, then slept when idle; a second connect
    // would show before the sleep.
    assert_eq!(dev.command().await.unwrap().0, Op::Connect);
    let next = dev
        .until("the next command or sleep", |e| match e {
            OnDemandEvent::Command(c) => Some(Err(c.clone())),
            OnDemandEvent::State {
                state: State::Asleep,
                ..
            } => Some(Ok(())),
            _ => None,
        })
        .await;
    assert!(
        next.is_ok(),
        "a second command reached the device: {next:?}"
    );
}

#[tokio::test]
async fn relay_unreachable_on_wake_gives_the_controller_the_devices_reason() {
    let w = World::start().await;
    let echo = echo_server().await;
    let key = w.relay.add_key("tau", Role::Device, "dev1");
    let allow = [format!("22=127.0.0.1:{echo}")];
    // Registered once, as on its first start; then its relay address goes bad.
    let mut first = w.sleeper("dev1", key.clone(), &allow, w.on_demand("dev1"));
    first.state(State::Asleep).await;
    w.wait_listed("dev1", "asleep").await;
    drop(first);
    let mut states = w.broker.subscribe("admin", "warren/tau/dev1/state").await;
    let mut settings = w.relay.agent_settings("tau", "dev1", key, &allow);
    settings.relay = format!("127.0.0.1:{}", closed_port().await);
    let od = w.on_demand("dev1");
    settings.on_demand = Some(od.clone());
    let mut dev = Sleeper::start(settings, od);
    let at_start = dev.state(State::Error).await.unwrap();

    let bob = w.relay.add_key("tau", Role::Controller, "bob");
    let conn = w.relay.controller("tau", bob).await;
    let err = echo_through(&conn, "dev1", 22, b"x").await.unwrap_err();
    let err = format!("{err:#}");
    let reason = dev.state(State::Error).await.unwrap();
    assert_eq!(reason, at_start, "the same failure each time");
    assert!(
        err.contains("could not wake") && err.contains(&reason),
        "controller got {err:?}, device reported {reason:?}"
    );
    assert!(!err.contains("within"), "a reason, not a timeout: {err}");
    let seen = states.until_state("error").await;
    assert_eq!(seen.last().unwrap()["reason"], reason.as_str());
    let wake = w.relay.wait_audit(&w.audit(kind::WAKE), |_| true).await;
    assert_eq!(wake.result, "failed");
    assert_eq!(wake.detail.as_deref(), Some(reason.as_str()));
    let refused = w
        .relay
        .wait_audit(&audit_of(warren::audit::kind::STREAM_OPEN, 10), |e| {
            e.result == "refused"
        })
        .await;
    assert_eq!(refused.reason.as_deref(), Some("wake_failed"));
}

#[tokio::test]
async fn malformed_and_expired_commands_are_ignored() {
    let w = World::start().await;
    let echo = echo_server().await;
    let key = w.relay.add_key("tau", Role::Device, "dev1");
    let allow = [format!("22=127.0.0.1:{echo}")];
    let topic = "warren/tau/dev1/cmd";
    let mut dev = w.sleeper("dev1", key.clone(), &allow, w.on_demand("dev1"));
    dev.state(State::Asleep).await;
    // Its state on the broker: it has subscribed to its commands (before).
    let mut states = w.broker.subscribe("admin", "warren/tau/dev1/state").await;
    states.until_state("asleep").await;

    for junk in ["not json", r#"{"op":"reboot","id":"x"}"#, "{}"] {
        let r = w.broker.publish("admin", topic, junk, &[]).await;
        assert!(r.ok, "{}", r.stderr);
        let why = dev.command().await.unwrap_err();
        assert!(!why.is_empty());
    }
    // Still alive: it takes the next good command.
    let r = w
        .broker
        .publish("admin", topic, r#"{"op":"disconnect","id":"alive"}"#, &[])
        .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        dev.command().await.unwrap(),
        (Op::Disconnect, "alive".into())
    );

    // While the agent is away, the broker keeps its session: a command that
    // expires before it is back is dropped; one that has not is delivered.
    drop(dev);
    states.until_state("offline").await;
    let expiry = ["-D", "publish", "message-expiry-interval", "1"];
    let r = w
        .broker
        .publish("admin", topic, r#"{"op":"connect","id":"stale"}"#, &expiry)
        .await;
    assert!(r.ok, "{}", r.stderr);
    // The expiry under test is wall-clock time on the broker: let it pass.
    tokio::time::sleep(PAST_EXPIRY).await;
    let r = w
        .broker
        .publish("admin", topic, r#"{"op":"disconnect","id":"fresh"}"#, &[])
        .await;
    assert!(r.ok, "{}", r.stderr);
    let mut dev = w.sleeper("dev1", key, &allow, w.on_demand("dev1"));
    assert_eq!(
        dev.command().await.unwrap(),
        (Op::Disconnect, "fresh".into()),
        "the expired connect must not be delivered"
    );
}

#[tokio::test]
async fn the_broker_acl_keeps_a_device_off_other_devices_command_topics() {
    let broker = Mosquitto::start().await;
    let mut watch = broker.subscribe("admin", "warren/tau/dev2/cmd").await;
    let forged = broker
        .publish(
            "dev1",
            "warren/tau/dev2/cmd",
            r#"{"op":"connect","id":"forged"}"#,
            &[],
        )
        .await;
    assert!(
        forged.stderr.contains("Not authorized"),
        "the broker took a device's command for another device: {}",
        forged.stderr
    );
    // Nor its own command topic, nor another device's state.
    let own = broker
        .publish("dev1", "warren/tau/dev1/cmd", r#"{"op":"connect"}"#, &[])
        .await;
    assert!(own.stderr.contains("Not authorized"), "{}", own.stderr);
    let state = broker
        .publish(
            "dev1",
            "warren/tau/dev2/state",
            r#"{"state":"online"}"#,
            &[],
        )
        .await;
    assert!(state.stderr.contains("Not authorized"), "{}", state.stderr);
    // The relay's credentials may: the watcher sees that one only.
    let ok = broker
        .publish(
            "relay",
            "warren/tau/dev2/cmd",
            r#"{"op":"connect","id":"relay"}"#,
            &[],
        )
        .await;
    assert!(
        ok.ok && !ok.stderr.contains("Not authorized"),
        "{}",
        ok.stderr
    );
    let (_, payload) = watch.next().await;
    assert!(payload.contains("\"relay\""), "{payload}");
}

#[tokio::test]
async fn broker_down_while_asleep_the_agent_retries_and_reports_when_back() {
    let mut w = World::start().await;
    let mut dev = w.asleep_echo_device("dev1").await;
    let mut states = w.broker.subscribe("admin", "warren/tau/dev1/state").await;
    states.until_state("asleep").await;
    drop(states);

    w.broker.kill().await;
    let down = dev.broker(false).await;
    assert!(!down.is_empty());
    w.broker.restart().await;
    let back = dev.broker(true).await;
    assert!(back.contains("back"), "{back}");
    // The broker lost everything (no persistence): the agent published its
    // state again and subscribed again, so a wake still works.
    let mut states = w.broker.subscribe("admin", "warren/tau/dev1/state").await;
    let seen = states.until_state("asleep").await;
    assert!(!seen.is_empty());
    let bob = w.relay.add_key("tau", Role::Controller, "bob");
    let conn = w.relay.controller("tau", bob).await;
    // The relay's own session reconnects too (its queued command goes out
    // then): the wake works within --wake-timeout.
    let echoed = echo_through(&conn, "dev1", 22, b"after").await.unwrap();
    assert_eq!(echoed, b"after");
}

/// A CA, a broker certificate for 127.0.0.1, and client certificates
/// whose common names are `clients` (the broker's user names), in `dir`.
fn make_pki(dir: &std::path::Path, clients: &[&str]) -> common::mosquitto::BrokerTls {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "warren test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose, file: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (
            write_file(dir, &format!("{file}.crt"), &cert.pem()),
            write_file(dir, &format!("{file}.key"), &key.serialize_pem()),
        )
    };
    let (cert, key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "broker",
        ExtendedKeyUsagePurpose::ServerAuth,
        "broker",
    );
    for c in clients {
        leaf(vec![], c, ExtendedKeyUsagePurpose::ClientAuth, c);
    }
    common::mosquitto::BrokerTls {
        ca: write_file(dir, "ca.crt", &ca.pem()),
        cert,
        key,
        client_certs: true,
    }
}

#[tokio::test]
async fn mqtts_with_a_private_ca_and_client_certificates_wakes_a_device() {
    let pki = tempfile::tempdir().unwrap();
    let tls = make_pki(pki.path(), &["relay", "dev1", "admin"]);
    let ca = tls.ca.clone();
    let broker = Mosquitto::start_with(Some(tls)).await;
    let with_cert = |user: &str| BrokerSettings {
        url: BrokerUrl::parse(&format!("mqtts://127.0.0.1:{}", broker.port)).unwrap(),
        username: None,
        password: None,
        ca: Some(ca.clone()),
        client_cert: Some((
            pki.path().join(format!("{user}.crt")),
            pki.path().join(format!("{user}.key")),
        )),
    };
    let relay_broker = with_cert("relay");
    let device_broker = with_cert("dev1");
    let w = World::with_broker(broker, Some(relay_broker)).await;
    let echo = echo_server().await;
    let key = w.relay.add_key("tau", Role::Device, "dev1");
    let od = OnDemand {
        broker: device_broker.clone(),
        idle_timeout: IDLE,
        topics: Topics::default(),
    };
    let mut dev = w.sleeper("dev1", key.clone(), &[format!("22=127.0.0.1:{echo}")], od);
    dev.state(State::Asleep).await;
    w.wait_listed("dev1", "asleep").await;
    let bob = w.relay.add_key("tau", Role::Controller, "bob");
    let conn = w.relay.controller("tau", bob).await;
    let echoed = echo_through(&conn, "dev1", 22, b"over tls").await.unwrap();
    assert_eq!(echoed, b"over tls");
    dev.state(State::Online).await;
    let wake = w.relay.wait_audit(&w.audit(kind::WAKE), |_| true).await;
    assert_eq!(wake.result, "ok");

    // The broker requires a certificate: without one, no session.
    let no_cert = OnDemand {
        broker: BrokerSettings {
            client_cert: None,
            ..device_broker
        },
        idle_timeout: IDLE,
        topics: Topics::default(),
    };
    let mut settings =
        w.relay
            .agent_settings("tau", "dev1", key, &[format!("22=127.0.0.1:{echo}")]);
    settings.on_demand = Some(no_cert.clone());
    let mut refused = Sleeper::start(settings, no_cert);
    let why = refused.broker(false).await;
    assert!(!why.is_empty());
}

#[tokio::test]
async fn wake_and_sleep_through_the_relay_without_broker_credentials() {
    let w = World::start().await;
    let echo = echo_server().await;
    let key = w.relay.add_key("tau", Role::Device, "dev1");
    let od = OnDemand {
        idle_timeout: Duration::from_secs(600),
        ..w.on_demand("dev1")
    };
    let mut dev = w.sleeper("dev1", key, &[format!("22=127.0.0.1:{echo}")], od);
    dev.state(State::Asleep).await;
    w.wait_listed("dev1", "asleep").await;

    // `warren wake dev1`: the controller's own key, no broker credentials.
    let r = common::cli::warren(&[
        "wake",
        "dev1",
        "--relay",
        &w.relay.addr.to_string(),
        "--system",
        "tau",
        "--key",
        common::cli::p(&w.alice),
        "--relay-host-key",
        &w.relay.host_key(),
    ])
    .await;
    assert!(r.ok, "warren wake: {}", r.stderr);
    assert!(
        r.stderr.contains("waking dev1 through the relay"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout_str().starts_with("dev1: online"),
        "{}",
        r.stdout_str()
    );
    dev.state(State::Online).await;
    w.wait_listed("dev1", "online").await;
    let wake = w.relay.wait_audit(&w.audit(kind::WAKE), |_| true).await;
    assert_eq!(
        (wake.result.as_str(), wake.key.as_deref()),
        ("ok", Some("alice"))
    );

    // `ssh tau@relay sleep dev1` with stock ssh.
    let known = write_file(w.dir.path(), "known_relay", &w.relay.known_hosts_line());
    let r = run(
        common::openssh::stock_ssh(&known, &w.alice)
            .args(["-p", &w.relay.addr.port().to_string(), "tau@127.0.0.1"])
            .arg("sleep dev1 --json"),
        Duration::from_secs(60),
    )
    .await;
    assert!(r.ok, "ssh sleep: {}", r.stderr);
    let reply: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(reply["result"], "asleep", "{reply}");
    let reason = dev.state(State::Asleep).await;
    assert_eq!(reason.as_deref(), Some("disconnect command"));
    w.relay
        .wait_audit(&w.audit(kind::SLEEP_REQUEST), |_| true)
        .await;
    w.relay.wait_audit(&w.audit(kind::SLEEP), |_| true).await;
    w.wait_listed("dev1", "asleep").await;

    // A device that is not on demand is refused with the reason.
    let bob = w.relay.add_key("tau", Role::Controller, "bob");
    let conn = w.relay.controller("tau", bob).await;
    let out = conn.exec("wake dev9").await.unwrap();
    assert_eq!(out.status, 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an on-demand device"), "{err}");
}
