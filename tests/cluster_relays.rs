//! Per-relay behaviour in a cluster on one real PostgreSQL database
//! (tests/common/postgres.rs): each relay's invites (and so the
//! `ssh-config` of a client enrolled with them) name that relay first, and a
//! cluster invite names every relay; an asleep on-demand device is woken
//! once (real mosquitto) for controllers on two relays, and their streams
//! reach it wherever it registers.

mod common;

use common::postgres::PgServer;
use common::{TestRelay, WAIT};
use warren::protocol::Role;
use warren::relay::RelayOptions;

/// `n` relays on one new database of `pg`, each listening for the others.
async fn cluster_with(pg: &PgServer, options: Vec<RelayOptions>) -> Vec<TestRelay> {
    let url = pg.database();
    let mut relays = Vec::new();
    for o in options {
        relays.push(
            TestRelay::start_with(RelayOptions {
                database: Some(url.clone()),
                ..o
            })
            .await,
        );
    }
    for r in &relays {
        let pg = r.store().postgres().unwrap();
        tokio::time::timeout(WAIT, async {
            while !pg.listening() {
                pg.changed().await;
            }
        })
        .await
        .expect("relay listening to the database");
    }
    relays
}

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
