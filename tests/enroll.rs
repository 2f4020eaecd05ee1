//! Enrollment with one-time invites: a new machine makes its key, registers
//! it over the SSH port with a token, and gets a config that works as is.
//! Replayed, expired, forged and malformed tokens and taken names are refused
//! and change nothing; two enrollments racing for one name: exactly one wins.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::process::Command;

use common::cli::{WARREN, warren, warren_ok};
use common::openssh::run;
use common::*;
use warren::agent::AgentSettings;
use warren::audit::kind;
use warren::client::enroll::{EnrollRequest, enroll};
use warren::client::{ClientSettings, Overrides};
use warren::protocol::Role;
use warren::protocol::token::Invite;
use warren::store::{AuditQuery, NewInvite};

/// `warren admin --data DIR invite …` for the test relay; returns the token.
async fn invite(r: &TestRelay, role: &str, name: &str) -> String {
    common::cli::invite_token(r.dir.path(), role, name, &r.addr.to_string()).await
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn request(token: &str, config: &Path) -> EnrollRequest {
    EnrollRequest {
        token: token.into(),
        config: config.to_path_buf(),
        labels: Default::default(),
        ca: None,
    }
}

fn key_count(r: &TestRelay) -> usize {
    r.admin_store().keys().unwrap().len()
}

#[tokio::test]
async fn enrolled_device_and_controller_work_with_no_editing() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let port = echo_server().await;
    let dir = tempfile::tempdir().unwrap();

    // The device: `warren enroll` writes agent config and key, 0600.
    let token = invite(&r, "device", "dev1").await;
    let agent_toml = dir.path().join("dev1/agent.toml");
    let out = warren_ok(&[
        "enroll",
        &token,
        "--config",
        agent_toml.to_str().unwrap(),
        "--label",
        "site=lab3",
        "--label",
        "gpu=a100",
    ])
    .await;
    assert!(
        out.contains("enrolled as device dev1 in system tau"),
        "{out}"
    );
    let key_file = dir.path().join("dev1/agent.key");
    assert_eq!(mode(&agent_toml), 0o600);
    assert_eq!(mode(&key_file), 0o600);
    let text = std::fs::read_to_string(&agent_toml).unwrap();
    assert!(
        text.contains(&r.host_key()) && text.contains("gpu = \"a100\""),
        "{text}"
    );
    // The private key stayed here: the relay knows only the public half.
    let public = std::fs::read_to_string(dir.path().join("dev1/agent.key.pub")).unwrap();
    let fp = warren::ssh::keys::fingerprint(&warren::ssh::keys::parse_public(&public).unwrap());
    let keys = r.admin_store().keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].fingerprint, fp);
    assert_eq!(
        keys[0].enrolled_via.as_deref(),
        Some(Invite::decode(&token).unwrap().id.as_str())
    );

    // The config works as written (only the allowlist is the test's own).
    let mut settings = AgentSettings::load(&agent_toml).unwrap();
    settings.allow = warren::protocol::AllowList::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let mut agent = TestAgent::start(settings);
    agent.online().await;

    // The controller: a client config that `warren ls` and streams use as is.
    let token = invite(&r, "controller", "alice").await;
    let client_toml = dir.path().join("alice/client.toml");
    warren_ok(&["enroll", &token, "--config", client_toml.to_str().unwrap()]).await;
    assert_eq!(mode(&client_toml), 0o600);
    assert_eq!(mode(&dir.path().join("alice/client.key")), 0o600);
    let settings = ClientSettings::resolve(&Overrides {
        config: Some(client_toml.clone()),
        ..Default::default()
    })
    .unwrap();
    let conn = warren::client::connect(&settings).await.unwrap();
    assert_eq!(
        echo_through(&conn, "dev1", port, b"hello").await.unwrap(),
        b"hello"
    );

    // Status: version and labels from the agent, and the label filter.
    let ls = warren_ok(&[
        "ls",
        "--client-config",
        client_toml.to_str().unwrap(),
        "--label",
        "gpu=a100",
        "--json",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(v[0]["name"], "dev1");
    assert_eq!(v[0]["online"], true);
    assert_eq!(v[0]["labels"]["site"], "lab3");
    assert_eq!(v[0]["version"], env!("CARGO_PKG_VERSION"));
    let none = warren_ok(&[
        "ls",
        "--client-config",
        client_toml.to_str().unwrap(),
        "--label",
        "gpu=h100",
        "--json",
    ])
    .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&none).unwrap(),
        serde_json::json!([])
    );

    // `key ls` says how each key came; `invite ls` shows both used.
    let data = r.dir.path().to_str().unwrap();
    let keys = warren_ok(&["admin", "--data", data, "key", "ls"]).await;
    assert_eq!(keys.matches("invite ").count(), 2, "{keys}");
    let invites: serde_json::Value = serde_json::from_str(
        &warren_ok(&["admin", "--data", data, "invite", "ls", "--json"]).await,
    )
    .unwrap();
    assert!(
        invites
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "used"),
        "{invites}"
    );

    // Both enrollments are in the audit log, with the peer address.
    r.relay.audit().flush().await.unwrap();
    let events = r
        .store()
        .audit(&AuditQuery {
            kind: Some(kind::ENROLL.into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.result == "ok" && e.peer.as_deref().unwrap().starts_with("127.0.0.1:"))
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_and_nothing_is_written() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dir = tempfile::tempdir().unwrap();
    let token = invite(&r, "device", "dev1").await;
    let first = dir.path().join("first.toml");
    enroll(&request(&token, &first)).await.unwrap();
    assert_eq!(key_count(&r), 1);

    let refused = |what: &'static str, token: String, says: &'static str| {
        let cfg = dir.path().join(format!("{what}.toml"));
        let r = &r;
        async move {
            let before = key_count(r);
            let err = format!("{:#}", enroll(&request(&token, &cfg)).await.unwrap_err());
            assert!(err.contains(says), "{what}: {err}");
            assert_eq!(key_count(r), before, "{what} changed the keys");
            assert!(!cfg.exists(), "{what} wrote a config");
            assert!(!cfg.with_extension("key").exists(), "{what} wrote a key");
        }
    };

    // Replay of a used token.
    refused("replay", token.clone(), "already used").await;

    // Expired: an invite whose time is up (made straight in the store, so
    // the test needs no clock tricks).
    let mut expired = Invite::decode(&invite(&r, "device", "dev2").await).unwrap();
    let (id, secret) = Invite::fresh_id_and_secret().unwrap();
    expired.id = id;
    expired.secret = secret;
    expired.name = name("dev3");
    expired.expires = warren::store::now() - 5;
    r.store()
        .create_invite(&NewInvite {
            id: &expired.id,
            secret_hash: &expired.secret_hash(),
            system: &expired.system,
            role: expired.role,
            name: &expired.name,
            expires: expired.expires,
        })
        .unwrap();
    refused("expired", expired.encode(), "expired").await;

    // Forged: a valid invite's id with another secret, or another name.
    let good = Invite::decode(&invite(&r, "device", "dev4").await).unwrap();
    let mut forged = good.clone();
    forged.secret = Invite::fresh_id_and_secret().unwrap().1;
    refused("forged-secret", forged.encode(), "secret does not match").await;
    let mut renamed = good.clone();
    renamed.name = name("dev5");
    refused("forged-name", renamed.encode(), "altered").await;
    let mut made_up = good.clone();
    made_up.id = "0123456789ab".into();
    refused("made-up", made_up.encode(), "no such invite").await;
    // A token for another relay's host key: the pin fails before anything is sent.
    let mut other = good.clone();
    other.host_key = format!("SHA256:{}", "A".repeat(43));
    refused("other-relay", other.encode(), "host key").await;

    // Malformed: never reaches the relay.
    refused(
        "malformed",
        "warren1.nonsense!".into(),
        "malformed invite token",
    )
    .await;
    let out = warren(&[
        "enroll",
        "not-a-token",
        "--config",
        dir.path().join("x.toml").to_str().unwrap(),
    ])
    .await;
    assert!(
        !out.ok && out.stderr.contains("malformed invite token"),
        "{}",
        out.stderr
    );

    // A name already owned: refused when the invite is made...
    let data = r.dir.path().to_str().unwrap().to_string();
    let relay = r.addr.to_string();
    let out = warren(&[
        "admin", "--data", &data, "invite", "--system", "tau", "--role", "device", "--name",
        "dev1", "--relay", &relay,
    ])
    .await;
    assert!(
        !out.ok && out.stderr.contains("already belongs"),
        "{}",
        out.stderr
    );
    // ...and when the name was taken after the invite was made.
    r.add_key("tau", Role::Device, "dev4");
    refused("taken", good.encode(), "already belongs").await;

    // The `enroll` user gets nothing but `enroll`: no streams, no commands,
    // no device names.
    let stranger = std::sync::Arc::new(warren::ssh::keys::generate_ed25519().unwrap());
    let conn = r.try_connect("enroll", stranger).await.unwrap();
    assert!(conn.open("dev1", 22).await.is_err());
    let out = conn.exec("ls").await.unwrap();
    assert_eq!(out.status, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("can only enroll"));
    assert!(conn.register("dev9", 22).await.is_err());
    assert_eq!(key_count(&r), 2);
    let err = warren(&["admin", "--data", &data, "system", "add", "enroll"]).await;
    assert!(!err.ok && err.stderr.contains("reserved"), "{}", err.stderr);

    // Refusals do not consume an invite.
    let invites = r.store().invites().unwrap();
    let dev4 = invites.iter().find(|i| i.name == "dev4").unwrap();
    assert_eq!(dev4.status, "pending");

    // Every refusal is in the audit log.
    r.relay.audit().flush().await.unwrap();
    let refusals = r
        .store()
        .audit(&AuditQuery {
            kind: Some(kind::ENROLL.into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .filter(|e| e.result == "refused")
        .count();
    assert_eq!(refusals, 6, "replay, expired, 3 forged, taken");
}

#[tokio::test]
async fn two_enrollments_racing_for_one_name_exactly_one_wins() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dir = tempfile::tempdir().unwrap();
    // Two invites for the same name (made while it was free).
    let a = invite(&r, "device", "dev9").await;
    let b = invite(&r, "device", "dev9").await;
    let (q1, q2) = (
        request(&a, &dir.path().join("a.toml")),
        request(&b, &dir.path().join("b.toml")),
    );
    let (ra, rb) = tokio::join!(enroll(&q1), enroll(&q2));
    assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{ra:?} {rb:?}");
    let loser = ra.err().or(rb.err()).unwrap();
    assert!(
        format!("{loser:#}").contains("already belongs"),
        "{loser:#}"
    );
    assert_eq!(key_count(&r), 1);
    assert_eq!(
        dir.path().join("a.toml").exists() as u8 + dir.path().join("b.toml").exists() as u8,
        1
    );

    // One token used twice at once: exactly one wins.
    let c = invite(&r, "controller", "bob").await;
    let (q1, q2) = (
        request(&c, &dir.path().join("c.toml")),
        request(&c, &dir.path().join("d.toml")),
    );
    let (rc, rd) = tokio::join!(enroll(&q1), enroll(&q2));
    assert_eq!(rc.is_ok() as u8 + rd.is_ok() as u8, 1, "{rc:?} {rd:?}");
    assert_eq!(key_count(&r), 2);
}

#[tokio::test]
async fn invites_can_be_listed_and_revoked() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let token = invite(&r, "device", "dev1").await;
    let id = Invite::decode(&token).unwrap().id;
    let data = r.dir.path().to_str().unwrap();
    let ls = warren_ok(&["admin", "--data", data, "invite", "ls"]).await;
    assert!(ls.contains(&id) && ls.contains("pending"), "{ls}");
    // The secret is never shown again.
    assert!(!ls.contains(&Invite::decode(&token).unwrap().secret));
    warren_ok(&["admin", "--data", data, "invite", "revoke", &id]).await;
    let out = warren(&["admin", "--data", data, "invite", "revoke", &id]).await;
    assert!(!out.ok && out.stderr.contains("revoked"), "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let err = enroll(&request(&token, &dir.path().join("a.toml")))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");
    // The store has only the hash of the secret.
    let secret = Invite::decode(&token).unwrap().secret;
    for file in ["warren.db", "warren.db-wal"] {
        let bytes = std::fs::read(r.dir.path().join(file)).unwrap_or_default();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    let events = r
        .admin_store()
        .audit(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&kind::INVITE_CREATE) && kinds.contains(&kind::INVITE_REVOKE),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn after_enroll_warren_agent_and_warren_ls_need_no_flags() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let home = tempfile::tempdir().unwrap();
    let xdg = home.path().to_str().unwrap();
    let with_home = |args: &[&str]| {
        let mut c = Command::new(WARREN);
        c.args(args)
            .env("XDG_CONFIG_HOME", xdg)
            .env("WARREN_LOG", "error")
            .env_remove("WARREN_AGENT_CONFIG")
            .env_remove("WARREN_CLIENT_CONFIG");
        c
    };
    let token = invite(&r, "device", "dev1").await;
    let out = run(&mut with_home(&["enroll", &token]), WAIT).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(home.path().join("warren/agent.toml").exists());
    // `warren agent` with no flags finds the config enroll wrote.
    let _agent = common::openssh::spawn(&mut with_home(&["agent"]));
    r.wait_online("tau", "dev1", true).await;

    let token = invite(&r, "controller", "alice").await;
    let out = run(&mut with_home(&["enroll", &token, "--json"]), WAIT).await;
    assert!(out.ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["role"], "controller");
    let ls = run(&mut with_home(&["ls"]), WAIT).await;
    assert!(ls.ok, "{}", ls.stderr);
    assert!(
        ls.stdout_str()
            .lines()
            .any(|l| l.starts_with("dev1") && l.contains("online")),
        "{}",
        ls.stdout_str()
    );
    // `warren log` reads this system's audit log through the relay.
    let log = run(&mut with_home(&["log", "--kind", "enroll", "--json"]), WAIT).await;
    assert!(log.ok, "{}", log.stderr);
    let names: Vec<String> = log
        .stdout_str()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, vec!["alice", "dev1"]);
    // A second enroll into the same place is refused before anything happens.
    let token = invite(&r, "device", "dev2").await;
    let out = run(&mut with_home(&["enroll", &token]), WAIT).await;
    assert!(
        !out.ok && out.stderr.contains("already exists"),
        "{}",
        out.stderr
    );
    assert_eq!(key_count(&r), 2);
}
