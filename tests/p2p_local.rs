//! Direct paths on loopback, in process: the relay with its UDP discovery,
//! an agent, and a controller's tunnel. Shows the signalling, the QUIC
//! path and per-stream authorization by the relay (audited as
//! `path=direct`), and each control that keeps streams relayed.
//! The NAT cases run in network namespaces (tests/p2p.rs).

mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warren::audit::kind;
use warren::client::ClientSettings;
use warren::client::direct::Stream;
use warren::client::tunnel::{OpenError, Tunnel};
use warren::p2p::{DIRECT_CONN_WINDOW, DIRECT_STREAM_WINDOW, Mode};
use warren::protocol::Role;
use warren::relay::RelayOptions;
use warren::relay::udp::Discovery;
use warren::store::AuditQuery;

/// A relay with UDP discovery on loopback (unless `udp` is false).
async fn relay(udp: bool, forbid: &[&str]) -> TestRelay {
    let stop = CancellationToken::new();
    let mut udp_port = None;
    if udp {
        let d = Discovery::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        udp_port = Some(d.local_addr().unwrap().port());
        tokio::spawn(d.serve(stop.clone()));
    }
    let r = TestRelay::start_with(RelayOptions {
        udp_port,
        forbid_direct: forbid.iter().map(|s| name(s)).collect(),
        ..Default::default()
    })
    .await;
    // The discovery task ends with the relay's own stop.
    r.add_system("tau");
    let relay_stop = r.stop.clone();
    tokio::spawn(async move {
        relay_stop.cancelled().await;
        stop.cancel();
    });
    r
}

fn tunnel(r: &TestRelay, mode: Mode) -> Arc<Tunnel> {
    let key = r.add_key("tau", Role::Controller, "alice");
    let settings = ClientSettings {
        relay: r.addr.to_string(),
        system: name("tau"),
        key_path: "alice".into(),
        key,
        relay_host_key: r.host_key(),
        socks_auth: None,
        relay_ca: None,
    };
    let mut t = Tunnel::start(settings, r.stop.clone(), None);
    t.set_p2p(mode);
    Arc::new(t)
}

/// Sends `data` through `stream` to the echo service and reads it back.
async fn echo_through(stream: Stream, data: &[u8]) -> Vec<u8> {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(far);
    let splice = tokio::spawn(stream.splice_io(r, w));
    let (mut nr, mut nw) = tokio::io::split(near);
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        nw.write_all(&data).await.unwrap();
        nw.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, nr.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    writer.await.unwrap();
    let _ = splice.await;
    back
}

fn streams() -> AuditQuery {
    AuditQuery {
        system: Some("tau".into()),
        limit: 100,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_direct_path_carries_streams_the_relay_authorized() {
    let r = relay(true, &[]).await;
    let (_agent, port) = r.echo_device("tau", "dev1").await;
    let t = direct_up(&r, port).await;

    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let s = t.open_stream("dev1", port).await.unwrap();
    assert!(matches!(s, Stream::Direct(_)), "stream not direct");
    assert_eq!(echo_through(s, &data).await, data);

    // The relay audited the stream as direct, with the controller's counts.
    let closed = r
        .wait_audit(&streams(), |e| {
            e.kind == kind::STREAM_CLOSE
                && e.detail.as_deref().unwrap_or("").starts_with("path=direct")
        })
        .await;
    assert_eq!(closed.bytes_up, Some(data.len() as u64));
    assert_eq!(closed.bytes_down, Some(data.len() as u64));
    let opened = r
        .wait_audit(&streams(), |e| {
            e.kind == kind::STREAM_OPEN && e.result == "ok"
        })
        .await;
    assert_eq!(opened.detail.as_deref(), Some("path=direct"));
    assert_eq!(
        opened.target.as_deref(),
        Some(format!("dev1:{port}").as_str())
    );
    let ls = ls_dev1(&r).await;
    assert_eq!(
        (ls.path.as_deref(), ls.path_why.as_deref()),
        (Some("direct"), None)
    );

    // The relay still decides: a port dev1 does not serve is refused on
    // the direct path too, and audited.
    let err = t.open_stream("dev1", 9).await.err().expect("refused");
    assert!(
        matches!(&err, OpenError::Refused(why) if why.contains("does not serve port 9")),
        "{err:?}"
    );
    r.wait_audit(&streams(), |e| {
        e.result == "refused" && e.detail.as_deref().unwrap_or("").starts_with("path=direct")
    })
    .await;
}

#[tokio::test]
async fn a_transfer_larger_than_the_windows_arrives_intact_and_in_order() {
    let r = relay(true, &[]).await;
    let (_agent, port) = r.echo_device("tau", "dev1").await;
    let t = direct_up(&r, port).await;

    // More than a stream's and a connection's receive windows, each way
    // (the echo sends it back), in bytes that differ from their
    // neighbours, so a chunk lost, doubled or moved shows.
    let len = DIRECT_CONN_WINDOW.max(DIRECT_STREAM_WINDOW) as usize * 2 + 12_345;
    let mut x = 0x2545_f491_u32;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let s = t.open_stream("dev1", port).await.unwrap();
    assert!(matches!(s, Stream::Direct(_)), "stream not direct");
    let back = echo_through(s, &data).await;
    assert_eq!(back.len(), data.len());
    let first_diff = back.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "the echo differs from the data");
}

/// dev1 as `ls` shows it, with the running relay's live view.
async fn ls_dev1(r: &TestRelay) -> warren::store::DeviceStatus {
    let live: &dyn warren::admin::LiveRelay = r.relay.as_ref();
    let all = warren::admin::status::list(r.store(), Some(live), Some("tau".into()))
        .await
        .unwrap();
    all.into_iter()
        .find(|d| d.name == "dev1")
        .expect("dev1 listed")
}

/// Waits until the direct path to dev1 has failed; its reason.
/// A tunnel whose direct path to dev1 (serving `port`) is up.
async fn direct_up(r: &TestRelay, port: u16) -> Arc<Tunnel> {
    let t = tunnel(r, Mode::Prefer);
    t.keep_direct("dev1", port);
    let path = t.path("dev1");
    let link = path.wait_up(WAIT).await;
    assert!(link.is_some(), "no direct path: {:?}", path.why_relayed());
    t
}

async fn relayed_because(t: &Tunnel, port: u16) -> String {
    // A stream starts the upgrade and is relayed meanwhile.
    let s = t.open_stream("dev1", port).await.unwrap();
    assert!(matches!(s, Stream::Relayed(_)));
    assert_eq!(echo_through(s, b"hello").await, b"hello");
    let path = t.path("dev1");
    assert!(path.wait_up(WAIT).await.is_none(), "came up");
    path.why_relayed().unwrap()
}

#[tokio::test]
async fn an_agent_with_p2p_off_is_always_relayed() {
    let r = relay(true, &[]).await;
    let port = echo_server().await;
    let key = r.add_key("tau", Role::Device, "dev1");
    let mut settings = r.agent_settings("tau", "dev1", key, &[format!("127.0.0.1:{port}")]);
    settings.p2p = false;
    let mut agent = TestAgent::start(settings);
    agent.online().await;
    let t = tunnel(&r, Mode::Prefer);
    let why = relayed_because(&t, port).await;
    assert!(why.contains("p2p = false"), "{why}");
    let opened = r
        .wait_audit(&streams(), |e| {
            e.kind == kind::STREAM_OPEN && e.result == "ok"
        })
        .await;
    assert_eq!(opened.detail.as_deref(), Some("path=relayed"));
}

#[tokio::test]
async fn the_relay_can_forbid_direct_paths_for_a_system() {
    let r = relay(true, &["tau"]).await;
    let (_agent, port) = r.echo_device("tau", "dev1").await;
    let t = tunnel(&r, Mode::Prefer);
    let why = relayed_because(&t, port).await;
    assert!(why.contains("forbids direct paths in system tau"), "{why}");
    // `ls` (and its JSON) shows the path and why it is relayed.
    let ls = ls_dev1(&r).await;
    assert_eq!(ls.path.as_deref(), Some("relayed"));
    assert!(
        ls.path_why.as_deref().unwrap().contains("forbids"),
        "{ls:?}"
    );
    let json = serde_json::to_string(&ls).unwrap();
    assert!(json.contains(r#""path":"relayed""#), "{json}");
}

/// Bytes of a direct path never cross the relay, where limits are kept:
/// a limited device (or one of a limited system) stays relayed.
#[tokio::test]
async fn a_device_with_a_bandwidth_limit_is_offered_no_direct_path() {
    let r = relay(true, &[]).await;
    let (_agent, port) = r.echo_device("tau", "dev1").await;
    let dev1 = warren::protocol::DeviceId::new(name("tau"), name("dev1"));
    let limit = warren::protocol::rate::Rate::with_burst(10_000_000, 1_000_000).unwrap();
    r.admin_store()
        .set_rate(&name("tau"), Some(&name("dev1")), Some(limit))
        .unwrap();
    let mut rechecks = r.relay.rechecks();
    tokio::time::timeout(WAIT, async {
        while r.relay.bandwidth().device_rate(&dev1).is_none() {
            rechecks.changed().await.unwrap();
        }
    })
    .await
    .expect("the relay applies the stored limit");
    let t = tunnel(&r, Mode::Prefer);
    let why = relayed_because(&t, port).await;
    assert!(why.contains("has a bandwidth limit"), "{why}");
    let ls = ls_dev1(&r).await;
    assert_eq!(ls.path.as_deref(), Some("relayed"));
}

#[tokio::test]
async fn require_fails_without_a_direct_path_and_off_never_tries() {
    let r = relay(false, &[]).await;
    let (_agent, port) = r.echo_device("tau", "dev1").await;
    let t = tunnel(&r, Mode::Require);
    let err = t
        .open_stream("dev1", port)
        .await
        .err()
        .expect("no direct path");
    let text = err.to_string();
    assert!(
        text.contains("--p2p require") && text.contains("no UDP discovery"),
        "{text}"
    );

    let off = {
        let key = r.add_key("tau", Role::Controller, "bob");
        let settings = ClientSettings {
            relay: r.addr.to_string(),
            system: name("tau"),
            key_path: "bob".into(),
            key,
            relay_host_key: r.host_key(),
            socks_auth: None,
            relay_ca: None,
        };
        let mut t = Tunnel::start(settings, r.stop.clone(), None);
        t.set_p2p(Mode::Off);
        t
    };
    let s = off.open_stream("dev1", port).await.unwrap();
    assert_eq!(echo_through(s, b"x").await, b"x");
    assert!(
        matches!(
            off.path("dev1").state(),
            warren::client::direct::State::Idle
        ),
        "off must never try a direct path"
    );
}
