//! Gateways in one process on loopback: a gateway whose scope is
//! 127.0.0.0/8 serves hosts "of its network" that are loopback addresses.
//! Covers what needs no namespaces: the announcement contract and its bad
//! input, scope and port refusals, listen-forward rules, association pushes
//! and the relay's view in `ls`.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::agent::AgentEvent;
use warren::agent::gateway::GatewayConfig;
use warren::protocol::{Cidr, Role};

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Starts gateway `name` with `scope`, serving `ports` there.
async fn gateway(r: &TestRelay, name: &str, scope: &[&str], ports: &[u16]) -> TestAgent {
    let key = r.add_key("tau", Role::Device, name);
    let mut s = r.agent_settings("tau", name, key, &strings(&["127.0.0.1:1"]));
    s.gateway = GatewayConfig::from_file(Some(&strings(scope)), Some(ports), None, &[]).unwrap();
    let mut agent = TestAgent::start(s);
    agent.online().await;
    agent
}

/// Waits for the gateway's next association list: (served, refused).
async fn associations(agent: &mut TestAgent) -> (Vec<String>, Vec<String>) {
    loop {
        match agent.next().await {
            AgentEvent::Associations { served, refused } => return (served, refused),
            AgentEvent::Offline { reason } => panic!("gateway went offline: {reason}"),
            AgentEvent::Online => {}
        }
    }
}

#[tokio::test]
async fn malformed_announcements_are_refused_and_change_nothing() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let _dev = r.device("tau", "gw1", &strings(&["127.0.0.1:1"])).await;
    let key = r.add_key("tau", Role::Device, "gw2");
    let conn = r.controller("tau", key).await;
    for (command, want) in [
        ("gateway-announce", "malformed gateway announcement"),
        ("gateway-announce {", "malformed gateway announcement"),
        (
            "gateway-announce {\"scope\":[\"10.0.1.7/24\"],\"ports\":[22],\"permit\":null}",
            "host bits",
        ),
        (
            "gateway-announce {\"scope\":[],\"ports\":[0],\"permit\":null}",
            "ports from 1 to 65535",
        ),
        (
            "gateway-announce {\"scope\":[],\"ports\":[22],\"permit\":null,\"extra\":1}",
            "unknown field",
        ),
        ("ls", "device keys may run only"),
        ("gateway-announcex", "device keys may run only"),
    ] {
        let out = conn.exec(command).await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status, 0, "{command:?} must fail");
        assert!(err.contains(want), "{command:?}: {err}");
    }
    let huge = format!("gateway-announce {}", "x".repeat(70_000));
    let out = conn.exec(&huge).await.unwrap();
    assert_ne!(out.status, 0);
    assert!(r.store().gateways(None).unwrap().is_empty());
    // `time` works for any device key (warren doctor uses it).
    let out = conn.exec("time").await.unwrap();
    let t: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(t.abs_diff(warren::store::now()) < 5);
}

#[tokio::test]
async fn a_gateway_serves_its_scope_and_ports_and_nothing_else() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("other");
    let echo = echo_server().await;
    let closed = closed_port().await;
    let _gw = gateway(&r, "gw1", &["127.0.0.0/8"], &[echo, closed]).await;
    let ctl = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;
    // Online comes after the announcement: routable at once.
    assert_eq!(
        echo_through(&ctl, "127.0.0.1", echo, b"by address")
            .await
            .unwrap(),
        b"by address"
    );
    assert_eq!(
        echo_through(&ctl, "127.0.0.1.via.gw1", echo, b"named")
            .await
            .unwrap(),
        b"named"
    );
    // A single gateway also takes names that are no device...
    assert_eq!(
        echo_through(&ctl, "localhost", echo, b"by name")
            .await
            .unwrap(),
        b"by name"
    );
    // ...but a device that is known and offline is reported as such.
    let dev = r
        .device("tau", "dev9", &strings(&[&format!("127.0.0.1:{echo}")]))
        .await;
    drop(dev);
    r.wait_online("tau", "dev9", false).await;
    // The offline record follows the registry by one store write.
    r.wait_status("tau", "dev9", |d| !d.online).await;
    let err = echo_through(&ctl, "dev9", echo, b"x").await.unwrap_err();
    assert!(
        err.to_string().contains("device dev9 is offline"),
        "{err:#}"
    );
    for (host, port, want) in [
        (
            "10.1.2.3",
            echo,
            "outside the scope of every gateway of system tau (gw1: 127.0.0.0/8)",
        ),
        ("127.0.0.1", echo + 1, "gateway gw1 serves ports"),
        (
            "10.1.2.3.via.gw1",
            echo,
            "10.1.2.3 is outside the scope of gateway gw1",
        ),
        (
            "127.0.0.1.via.nosuch",
            echo,
            "gateway nosuch of system tau is not online",
        ),
        (
            "127.0.0.1",
            closed,
            "gateway gw1 for 127.0.0.1 could not open port",
        ),
    ] {
        let err = echo_through(&ctl, host, port, b"x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{host}:{port}: {err}");
    }
    // Nothing crosses systems: another system has no gateway.
    let other = r
        .controller("other", r.add_key("other", Role::Controller, "bob"))
        .await;
    let err = echo_through(&other, "127.0.0.1", echo, b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no gateway of system other is online"),
        "{err}"
    );

    // The relay shows the scope in `ls`.
    let out = ctl.exec("ls --json").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gw1 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "gw1")
        .unwrap();
    assert_eq!(gw1["scope"], serde_json::json!(["127.0.0.0/8"]));
    let dev9 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "dev9")
        .unwrap();
    assert_eq!(dev9["scope"], serde_json::json!([]));
    let text = String::from_utf8(ctl.exec("ls").await.unwrap().stdout).unwrap();
    assert!(text.lines().next().unwrap().ends_with("SCOPE"), "{text}");
    assert!(text.contains("127.0.0.0/8"), "{text}");
}

#[tokio::test]
async fn associations_reach_the_agent_without_a_restart() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let echo = echo_server().await;
    // Scope is one host; 127.0.0.2 comes only by association.
    let key = r.add_key("tau", Role::Device, "gw1");
    let mut s = r.agent_settings("tau", "gw1", key, &strings(&["127.0.0.1:1"]));
    s.gateway = GatewayConfig::from_file(
        Some(&strings(&["127.0.0.1/32"])),
        Some(&[echo]),
        Some(&strings(&["127.0.0.0/24"])),
        &[],
    )
    .unwrap();
    let mut agent = TestAgent::start(s);
    agent.online().await;
    let ctl = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;
    echo_through(&ctl, "127.0.0.1", echo, b"x").await.unwrap();
    let echo2 = tokio::net::TcpListener::bind(("127.0.0.2", echo)).await;
    let Ok(echo2) = echo2 else {
        panic!("cannot bind 127.0.0.2:{echo}")
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo2.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let err = echo_through(&ctl, "127.0.0.2", echo, b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside the scope"), "{err}");

    // Associated from another process's handle, as `warren admin` does.
    let admin = r.admin_store();
    let (tau, gw1) = (name("tau"), name("gw1"));
    admin
        .gateway_associate(&tau, &gw1, &Cidr::parse("127.0.0.0/28").unwrap())
        .unwrap();
    // The relay routes by the new list before it pushes it, so once the
    // agent has it, both ends agree.
    assert_eq!(
        associations(&mut agent).await,
        (strings(&["127.0.0.0/28"]), vec![])
    );
    assert_eq!(
        echo_through(&ctl, "127.0.0.2", echo, b"associated")
            .await
            .unwrap(),
        b"associated"
    );
    // An association outside the permit: flagged at the agent, refused by
    // the relay with the reason.
    admin
        .gateway_associate(&tau, &gw1, &Cidr::parse("127.0.1.0/24").unwrap())
        .unwrap();
    assert_eq!(
        associations(&mut agent).await,
        (strings(&["127.0.0.0/28"]), strings(&["127.0.1.0/24"]))
    );
    let err = echo_through(&ctl, "127.0.1.9", echo, b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside its permit"), "{err}");
    // Dissociated: gone again at once; associations() panics if the agent
    // went offline at any point.
    admin
        .gateway_dissociate(&tau, &gw1, &Cidr::parse("127.0.0.0/28").unwrap())
        .unwrap();
    assert_eq!(
        associations(&mut agent).await,
        (vec![], strings(&["127.0.1.0/24"]))
    );
    let err = echo_through(&ctl, "127.0.0.2", echo, b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside the scope"), "{err}");
}

#[tokio::test]
async fn a_listen_forward_carries_to_an_allowed_device() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let web = http_server("metrics-ok").await;
    let _collector = r
        .device(
            "tau",
            "collector",
            &strings(&[&format!("9100=127.0.0.1:{web}")]),
        )
        .await;
    let lport = closed_port().await;
    let key = r.add_key("tau", Role::Device, "gw1");
    let mut s = r.agent_settings("tau", "gw1", key, &strings(&["127.0.0.1:1"]));
    let listen: warren::agent::gateway::ListenFile = toml::from_str(&format!(
        "bind = \"127.0.0.1:{lport}\"\nto = \"collector:9100\"\n"
    ))
    .unwrap();
    s.gateway = GatewayConfig::from_file(None, None, None, &[listen]).unwrap();
    let mut gw = TestAgent::start(s);
    gw.online().await;

    let get = || async move {
        let mut s = TcpStream::connect(("127.0.0.1", lport)).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut body = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut body))
            .await
            .ok()?
            .ok()?;
        Some(body)
    };
    let body = get().await.unwrap_or_default();
    assert!(!body.contains("metrics-ok"), "no rule yet: {body}");
    r.admin_store()
        .gateway_allow(
            &name("tau"),
            &name("gw1"),
            &warren::protocol::Target::parse("collector:9100").unwrap(),
        )
        .unwrap();
    let body = get().await.unwrap_or_default();
    assert!(body.ends_with("metrics-ok"), "{body}");
}
