//! Per-relay behaviour in a cluster on one real PostgreSQL database
//! (tests/common/postgres.rs): each relay's invites (and so the
//! `ssh-config` of a client enrolled with them) name that relay first, and a
//! cluster invite names every relay; an asleep on-demand device is woken
//! once (real mosquitto) for controllers on two relays, and their streams
//! reach it wherever it registers.

mod common;

use common::TestRelay;
use common::postgres::{PgServer, cluster_with};
use warren::protocol::Role;
use warren::relay::RelayOptions;

/// An invite made through `relay` without `--relay`: its token.
async fn invite_through(
    relay: &TestRelay,
    admin: &std::sync::Arc<warren::ssh::keys::PrivateKey>,
    name: &str,
) -> warren::protocol::token::Invite {
    let ops = relay.controller("ops", admin.clone()).await;
    let out = ops
        .exec(&format!(
            "invite --system tau --role controller --name {name} --json"
        ))
        .await
        .unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    warren::protocol::token::Invite::decode(made["token"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_relay_advertises_itself_in_its_invites_and_ssh_config_and_a_cluster_invite_names_every_relay()
 {
    let pg = PgServer::start();
    let relays = cluster_with(&pg, vec![RelayOptions::default(), RelayOptions::default()]).await;
    let (a, b) = (&relays[0], &relays[1]);
    a.add_system("tau");
    a.add_system("ops");
    let admin = a.add_key("ops", Role::Admin, "root");
    let (addr_a, addr_b) = (a.addr.to_string(), b.addr.to_string());
    let mut everyone = vec![addr_a.clone(), addr_b.clone()];
    everyone.sort();
    let mut pins = vec![a.host_key(), b.host_key()];
    pins.sort();
    for (relay, own, name) in [(a, &addr_a, "ann"), (b, &addr_b, "bob")] {
        let token = invite_through(relay, &admin, name).await;
        let listed: Vec<String> = token.relay.split(',').map(str::to_string).collect();
        // This relay first (B started last: a shared setting would say B for both)…
        assert_eq!(&listed[0], own, "invite through {own}: {}", token.relay);
        // …and every relay of the cluster, every host key pinned.
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(sorted, everyone);
        let mut pinned: Vec<String> = token.host_key.split(',').map(str::to_string).collect();
        pinned.sort();
        assert_eq!(pinned, pins);
    }
    // A controller enrolled with B's invite: its ssh-config goes through B.
    let token = {
        let ops = b.controller("ops", admin.clone()).await;
        let out = ops
            .exec("invite --system tau --role controller --name carol --json")
            .await
            .unwrap();
        let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        made["token"].as_str().unwrap().to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client.toml");
    let client = client.to_str().unwrap();
    common::cli::warren_ok(&["enroll", &token, "--config", client]).await;
    let config = common::cli::warren_ok(&["ssh-config", "--client-config", client, "dev1"]).await;
    assert!(
        config.contains(&format!("through relay {addr_b}"))
            && config.contains(&format!("--relay {addr_b}")),
        "{config}"
    );
    assert!(!config.contains(&addr_a), "{config}");
}

/// The `connect` commands on dev1's topic up to now: a marker published
/// now is the next message after them.
async fn connects_so_far(
    broker: &common::mosquitto::Mosquitto,
    commands: &mut common::mosquitto::Subscriber,
) -> usize {
    let marker = r#"{"marker":"now"}"#;
    let sent = broker
        .publish("admin", "warren/tau/dev1/cmd", marker, &[])
        .await;
    assert!(sent.ok, "{}", sent.stderr);
    let mut connects = 0;
    loop {
        let (_, payload) = commands.next().await;
        if payload == marker {
            return connects;
        }
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        if v["op"] == "connect" {
            connects += 1;
        }
    }
}

/// Broker settings for test user `user` of `broker`.
fn broker_login(broker: &common::mosquitto::Mosquitto, user: &str) -> warren::mqtt::BrokerSettings {
    warren::mqtt::BrokerSettings {
        url: warren::mqtt::BrokerUrl::parse(&broker.url()).unwrap(),
        username: Some(user.into()),
        password: Some(common::mosquitto::password(user).into()),
        ca: None,
        client_cert: None,
    }
}

/// Starts on-demand agent dev1 (serving `echo`) that knows only relay `b`,
/// and waits until it is asleep and `a` sees nobody holding it.
async fn asleep_on_b(
    a: &TestRelay,
    b: &TestRelay,
    broker: &common::mosquitto::Mosquitto,
    echo: u16,
) -> tokio_util::sync::DropGuard {
    use common::mosquitto::within;
    use warren::agent::on_demand::{self, OnDemand, OnDemandEvent};
    use warren::mqtt::{State, Topics};
    let mut written = b.relay.status_written();
    let key = b.add_key("tau", Role::Device, "dev1");
    let mut settings = b.agent_settings("tau", "dev1", key, &[format!("127.0.0.1:{echo}")]);
    let od = OnDemand {
        broker: broker_login(broker, "dev1"),
        idle_timeout: std::time::Duration::from_secs(60),
        topics: Topics::default(),
    };
    settings.on_demand = Some(od.clone());
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(on_demand::run(settings, od, stop.clone(), Some(tx)));
    within("dev1 asleep", async {
        while !matches!(
            events.recv().await,
            Some(OnDemandEvent::State {
                state: State::Asleep,
                ..
            })
        ) {}
    })
    .await;
    // Asleep as the cluster's store says: nobody holds it.
    let pg_a = a.store().postgres().unwrap();
    within("dev1 offline in the store", async {
        while pg_a.held_by_other("tau", "dev1").unwrap().is_some()
            || a.store()
                .devices(Some("tau"))
                .unwrap()
                .iter()
                .any(|d| d.online)
        {
            written.changed().await.unwrap();
        }
    })
    .await;
    stop.drop_guard()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asleep_device_asked_for_through_two_relays_is_woken_once_and_reached_where_it_registers()
 {
    use common::mosquitto::Mosquitto;
    use warren::mqtt::Topics;
    use warren::relay::wake::{WakeOptions, kind};
    let broker = Mosquitto::start().await;
    let login = |user: &str| broker_login(&broker, user);
    let waking = || RelayOptions {
        wake: Some(WakeOptions {
            broker: login("relay"),
            topics: Topics::default(),
            timeout: std::time::Duration::from_secs(20),
        }),
        ..Default::default()
    };
    let pg = PgServer::start();
    let relays = cluster_with(&pg, vec![waking(), waking()]).await;
    let (a, b) = (&relays[0], &relays[1]);
    a.add_system("tau");
    let alice = a.add_key("tau", Role::Controller, "alice");
    let echo = common::echo_server().await;
    let mut commands = broker.subscribe("admin", "warren/tau/dev1/cmd").await;
    // dev1 is on demand and knows only relay B: woken, it registers there.
    let _dev1 = asleep_on_b(a, b, &broker, echo).await;
    // Controllers on both relays ask at once; both streams reach it.
    let (on_a, on_b) = (
        a.controller("tau", alice.clone()).await,
        b.controller("tau", alice).await,
    );
    let (via_a, via_b) = tokio::join!(
        common::echo_through(&on_a, "dev1", echo, b"through A"),
        common::echo_through(&on_b, "dev1", echo, b"through B"),
    );
    assert_eq!(via_a.unwrap(), b"through A");
    assert_eq!(via_b.unwrap(), b"through B");
    // One `connect` on its topic, for two relays asked at once.
    let connects = connects_so_far(&broker, &mut commands).await;
    assert_eq!(connects, 1, "exactly one wake published for two relays");
    // The relay that sent it audited the wake, online.
    let q = common::audit_of(kind::WAKE, 50);
    a.wait_audit(&q, |e| {
        e.result == "ok" && e.detail.as_deref() == Some("online")
    })
    .await;
}
