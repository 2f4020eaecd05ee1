//! User authentication: the rules, the limits and the login deadline.

use super::*;
use crate::ssh::server;

#[tokio::test]
async fn the_raw_peer_logs_in_when_it_follows_the_rules() {
    let srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.login(&srv.user).await;
    assert_eq!(srv.granted.auths.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_connection_message_before_authentication_ends_the_connection() {
    let mut srv = server(Settings::default()).await;
    for t in [
        msg::GLOBAL_REQUEST,
        msg::REQUEST_SUCCESS,
        msg::REQUEST_FAILURE,
        msg::CHANNEL_OPEN,
        msg::CHANNEL_OPEN_CONFIRMATION,
        msg::CHANNEL_OPEN_FAILURE,
        msg::CHANNEL_WINDOW_ADJUST,
        msg::CHANNEL_DATA,
        msg::CHANNEL_EXTENDED_DATA,
        msg::CHANNEL_EOF,
        msg::CHANNEL_CLOSE,
        msg::CHANNEL_REQUEST,
        msg::CHANNEL_SUCCESS,
        msg::CHANNEL_FAILURE,
        msg::USERAUTH_SUCCESS,
        msg::USERAUTH_PK_OK,
        120,
    ] {
        let mut raw = Raw::connect(srv.addr, true, None).await;
        let m = match t {
            msg::GLOBAL_REQUEST => Writer::new(t)
                .string("tcpip-forward")
                .bool(true)
                .string("dev")
                .u32(22)
                .finish(),
            msg::CHANNEL_OPEN => Writer::new(t)
                .string("direct-tcpip")
                .u32(0)
                .u32(1 << 20)
                .u32(32768)
                .string("echo")
                .u32(1)
                .string("x")
                .u32(1)
                .finish(),
            _ => Writer::new(t).u32(0).u32(0).u32(0).u32(0).finish(),
        };
        raw.send(&m).await;
        raw.hung_up().await;
        assert!(
            matches!(srv.ended().await, mux::Ended::Local(_)),
            "message {t}"
        );
    }
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn a_wrong_signature_is_refused_and_grants_nothing() {
    let srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.send(
        &Writer::new(msg::SERVICE_REQUEST)
            .string("ssh-userauth")
            .finish(),
    )
    .await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::SERVICE_ACCEPT);
    let m = raw.signed_auth(&srv.user, true);
    raw.send(&m).await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::USERAUTH_FAILURE);
    // A signature by another key over the right data fails too.
    let other = generate_ed25519().unwrap();
    let mut m = raw.signed_auth(&other, false);
    let blob_other = other.public_key().key_data().encode_vec().unwrap();
    let blob_user = srv.user.public_key().key_data().encode_vec().unwrap();
    let at = m
        .windows(blob_other.len())
        .position(|w| w == blob_other.as_slice())
        .unwrap();
    m[at..at + blob_user.len()].copy_from_slice(&blob_user);
    raw.send(&m).await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::USERAUTH_FAILURE);
    // And then nothing else is allowed.
    raw.send(
        &Writer::new(msg::GLOBAL_REQUEST)
            .string("tcpip-forward")
            .bool(true)
            .string("d")
            .u32(1)
            .finish(),
    )
    .await;
    raw.hung_up().await;
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn ecdsa_and_rsa_user_keys_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, bits) in [
        ("ecdsa", "256"),
        ("ecdsa", "384"),
        ("ecdsa", "521"),
        ("rsa", "2048"),
    ] {
        let path = dir.path().join(format!("{kind}{bits}"));
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", kind, "-b", bits, "-f"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ssh-keygen -t {kind} -b {bits}");
        let key = crate::ssh::keys::read_private(&path).unwrap();
        let srv = server_for(Settings::default(), key).await;
        let conn = srv.client(Settings::default()).await;
        let out = conn.exec("x").await.unwrap();
        assert_eq!(out.stdout, b"ran x", "{kind} {bits}");
        assert_eq!(srv.granted.auths.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn authentication_needs_the_service_request_and_has_an_attempt_limit() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let m = raw.signed_auth(&srv.user, false);
    raw.send(&m).await;
    raw.hung_up().await;
    assert!(matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("SERVICE_REQUEST")));
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.send(
        &Writer::new(msg::SERVICE_REQUEST)
            .string("ssh-userauth")
            .finish(),
    )
    .await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::SERVICE_ACCEPT);
    let other = generate_ed25519().unwrap();
    for _ in 0..5 {
        let m = raw.signed_auth(&other, false);
        raw.send(&m).await;
        assert_eq!(raw.recv().await.unwrap()[0], msg::USERAUTH_FAILURE);
    }
    let m = raw.signed_auth(&other, false);
    raw.send(&m).await;
    raw.hung_up().await;
    assert!(matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("too many")));
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn public_key_queries_are_capped_at_twice_the_attempt_limit() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.send(
        &Writer::new(msg::SERVICE_REQUEST)
            .string("ssh-userauth")
            .finish(),
    )
    .await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::SERVICE_ACCEPT);
    // A known key: every query is answered "yes" and costs a lookup.
    let query = key_query(&srv.user);
    let mut out = Vec::new();
    for _ in 0..5000 {
        raw.seal
            .seal(raw.seq_out, &query[..1], &query[1..], &mut out);
        raw.seq_out = raw.seq_out.wrapping_add(1);
    }
    let _ = raw.s.write_all(&out).await;
    let mut answered = 0;
    while let Some(m) = raw.recv().await {
        assert_eq!(m[0], msg::USERAUTH_PK_OK);
        answered += 1;
    }
    assert_eq!(answered, 12, "queries answered of 5000 sent (limit 6)");
    assert!(matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("public key queries")));
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn a_big_data_packet_before_authentication_ends_the_connection_like_any_other() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    // Large enough for the path that passes data packets on whole.
    let m = Writer::new(msg::CHANNEL_DATA)
        .u32(0)
        .string(vec![0u8; 9000])
        .finish();
    raw.send(&m).await;
    raw.hung_up().await;
    let ended = srv.ended().await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("before authentication")),
        "{ended:?}"
    );
    assert!(srv.granted.nothing());
}

/// A server with a login deadline of 300 ms, and a raw peer past the key
/// exchange and the service request.
async fn grace_server_and_peer() -> (TestServer, Raw) {
    let settings = Settings {
        login_grace: Some(Duration::from_millis(300)),
        ..Settings::default()
    };
    let srv = server(settings).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.service_request().await;
    (srv, raw)
}

/// The server hung up on `raw` because the login took too long.
async fn timed_out(srv: &mut TestServer, raw: &mut Raw) {
    raw.hung_up().await;
    let ended = srv.ended().await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t == "authentication timeout"),
        "{ended:?}"
    );
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn a_peer_that_does_not_log_in_within_the_grace_is_disconnected() {
    let (mut srv, mut raw) = grace_server_and_peer().await;
    timed_out(&mut srv, &mut raw).await;
}

#[tokio::test]
async fn the_login_deadline_cuts_off_a_key_check_that_never_answers() {
    let (mut srv, mut raw) = grace_server_and_peer().await;
    // The test server's key check for user "slow" never answers.
    let blob = srv.user.public_key().key_data().encode_vec().unwrap();
    let query = Writer::new(msg::USERAUTH_REQUEST)
        .string("slow")
        .string("ssh-connection")
        .string("publickey")
        .bool(false)
        .string("ssh-ed25519")
        .string(&blob)
        .finish();
    raw.send(&query).await;
    timed_out(&mut srv, &mut raw).await;
}

#[tokio::test]
async fn a_peer_that_logged_in_in_time_outlives_the_grace() {
    let (srv, mut raw) = grace_server_and_peer().await;
    let m = raw.signed_auth(&srv.user, false);
    raw.send(&m).await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::USERAUTH_SUCCESS);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = Writer::new(msg::GLOBAL_REQUEST)
        .string("tcpip-forward")
        .bool(true)
        .string("dev")
        .u32(22)
        .finish();
    raw.send(&m).await;
    assert_eq!(raw.recv().await.unwrap()[0], msg::REQUEST_SUCCESS);
}

/// A server session that lets nobody in.
struct NoLogin;

impl server::ServerSession for NoLogin {
    async fn check_key(&mut self, _: &str, _: &PublicKey, _: bool) -> bool {
        false
    }
    fn authenticated(&mut self, _: server::ServerHandle) {}
    async fn tcpip_forward(&mut self, _: &str, _: u32) -> bool {
        false
    }
    async fn cancel_tcpip_forward(&mut self, _: &str, _: u32) -> bool {
        false
    }
    fn direct_tcpip(&mut self, _: &str, _: u32, _: crate::ssh::IncomingChannel) {}
    fn exec(&mut self, _: &str) -> server::Exec {
        server::Exec::Done(ExecOutput::default())
    }
}

#[tokio::test]
async fn a_server_config_login_grace_ends_a_connection_that_does_not_log_in() {
    let mut config = server::ServerConfig::new(generate_ed25519().unwrap());
    config.set_login_grace(Duration::from_millis(300));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let conn = server::start(&config, s, NoLogin).await.unwrap();
        conn.finished().await.unwrap();
    });
    let mut raw = Raw::connect(addr, true, None).await;
    raw.service_request().await;
    // Without the grace the server would wait for a login forever.
    raw.hung_up().await;
    tokio::time::timeout(WAIT, served).await.unwrap().unwrap();
}
