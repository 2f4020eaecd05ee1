//! The controller toolkit with real tools: `warren socks` with curl and ncat
//! (as ssh's ProxyCommand), `warren forward` across a relay restart,
//! `warren ssh-config` with plain ssh, scp and rsync, `warren connect-script`,
//! and `warren service`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::cli::warren_ok;
use common::openssh::{Sshd, curl, login_user, run, wait_for_line};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren::client::ClientSettings;
use warren::client::forward;
use warren::client::socks::{self, Credentials};
use warren::client::tunnel::{Tunnel, TunnelEvent};
use warren::protocol::Role;
use warren::protocol::limits::SOCKS_HANDSHAKE_TIMEOUT;
use warren::ssh::keys;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");
const LIMIT: Duration = Duration::from_secs(60);

/// A relay; device dev1 with a real sshd on port 22, a web service on 8080
/// and a dead target on 9090; a controller key alice (file and settings).
struct World {
    relay: TestRelay,
    sshd: Sshd,
    agent: TestAgent,
    dir: tempfile::TempDir,
    alice: PathBuf,
    web: u16,
}

impl World {
    async fn start() -> World {
        let relay = TestRelay::start().await;
        relay.add_system("tau");
        let sshd = Sshd::start().await;
        let web = http_server("hello from dev1").await;
        let dead = closed_port().await;
        let dir = tempfile::tempdir().unwrap();
        let alice = relay.add_key_file(dir.path(), "tau", Role::Controller, "alice");
        let agent = relay
            .device(
                "tau",
                "dev1",
                &[
                    format!("22=127.0.0.1:{}", sshd.port),
                    format!("8080=127.0.0.1:{web}"),
                    format!("9090=127.0.0.1:{dead}"),
                ],
            )
            .await;
        World {
            relay,
            sshd,
            agent,
            dir,
            alice,
            web,
        }
    }

    fn settings(&self) -> ClientSettings {
        ClientSettings {
            relay: self.relay.addr.to_string(),
            system: name("tau"),
            key_path: self.alice.clone(),
            key: Arc::new(keys::read_private(&self.alice).unwrap()),
            relay_host_key: self.relay.host_key(),
            socks_auth: None,
            relay_ca: None,
        }
    }

    /// Flags that point a `warren` client command at this relay.
    fn client_flags(&self) -> Vec<String> {
        vec![
            "--relay".into(),
            self.relay.addr.to_string(),
            "--system".into(),
            "tau".into(),
            "--key".into(),
            self.alice.to_string_lossy().into(),
            "--relay-host-key".into(),
            self.relay.host_key(),
        ]
    }

    /// known_hosts with the device sshd's key under `names`.
    fn known_hosts(&self, names: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            "known_hosts",
            &format!("{names} {}\n", self.sshd.host_pub),
        )
    }

    /// ssh options for the device's sshd login (key, pinned host key).
    fn ssh_opts(&self, known: &Path) -> Vec<String> {
        [
            "-i",
            &self.sshd.user_key.to_string_lossy(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", known.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// A SOCKS server on 127.0.0.1:0 over a tunnel; stops when dropped.
struct Socks {
    addr: std::net::SocketAddr,
    events: mpsc::UnboundedReceiver<TunnelEvent>,
    stop: CancellationToken,
}

impl Socks {
    async fn start(settings: ClientSettings, auth: Option<Credentials>) -> Socks {
        let stop = CancellationToken::new();
        let (tx, events) = mpsc::unbounded_channel();
        let tunnel = Arc::new(Tunnel::start(settings, stop.clone(), Some(tx)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(socks::serve(listener, tunnel, auth, stop.clone()));
        Socks { addr, events, stop }
    }

    async fn connected(&mut self) {
        loop {
            let e = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("tunnel event in time")
                .expect("tunnel running");
            if e == TunnelEvent::Connected {
                return;
            }
        }
    }
}

impl Drop for Socks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sends a SOCKS5 CONNECT for `host:port` and returns the reply code.
async fn socks_reply(proxy: std::net::SocketAddr, host: &str, port: u16) -> u8 {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply[..2], [5, 0], "method selection");
    reply[3]
}

fn controller_conns(relay: &TestRelay) -> usize {
    relay
        .relay
        .registry()
        .conns()
        .iter()
        .filter(|c| c.name.as_str() == "alice")
        .count()
}

#[tokio::test]
async fn socks_with_curl_reaches_devices_by_name_over_one_connection() {
    let w = World::start().await;
    let mut socks = Socks::start(w.settings(), None).await;
    socks.connected().await;
    let proxy = socks.addr.to_string();
    // Clients that stall mid-greeting must not hold up anyone: were the
    // handshake run in the accept loop, each would cost a whole
    // SOCKS_HANDSHAKE_TIMEOUT before the next client is even accepted.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(socks.addr).await.unwrap();
        s.write_all(&[5]).await.unwrap();
        stalled.push(s);
    }
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let r = curl(&["--socks5-hostname", &proxy, "http://dev1:8080/"]).await;
        assert!(r.ok, "curl failed: {}", r.stderr);
        assert_eq!(r.stdout_str(), "hello from dev1");
    }
    assert!(
        started.elapsed() < SOCKS_HANDSHAKE_TIMEOUT,
        "stalled clients held up others: {:?}",
        started.elapsed()
    );
    let r = curl(&["--socks5-hostname", &proxy, "http://nosuch:8080/"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("nosuch"), "{}", r.stderr);
    assert_eq!(
        controller_conns(&w.relay),
        1,
        "all streams share one SSH connection"
    );
}

#[tokio::test]
async fn socks_refusals_map_to_reply_codes() {
    let w = World::start().await;
    let mut socks = Socks::start(w.settings(), None).await;
    socks.connected().await;
    assert_eq!(socks_reply(socks.addr, "dev1", 8080).await, 0x00);
    // Unknown device, and an IP address with no gateway: host unreachable.
    assert_eq!(socks_reply(socks.addr, "nosuch", 22).await, 0x04);
    let mut ip = TcpStream::connect(socks.addr).await.unwrap();
    ip.write_all(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 22])
        .await
        .unwrap();
    let mut reply = [0u8; 12];
    ip.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[3], 0x04, "IP address without a gateway");
    // A port the device does not serve: not allowed.
    assert_eq!(socks_reply(socks.addr, "dev1", 8081).await, 0x02);
    // A served port whose target is down: connection refused.
    assert_eq!(socks_reply(socks.addr, "dev1", 9090).await, 0x05);
    // An offline device: host unreachable.
    let _dev2 = w.relay.device("tau", "dev2", &["22".into()]).await;
    drop(_dev2);
    w.relay.wait_online("tau", "dev2", false).await;
    assert_eq!(socks_reply(socks.addr, "dev2", 22).await, 0x04);
}

#[tokio::test]
async fn socks_password_auth_with_curl() {
    let w = World::start().await;
    let creds = Credentials::parse("alice:open-sesame").unwrap();
    let mut socks = Socks::start(w.settings(), Some(creds)).await;
    socks.connected().await;
    let good = format!("socks5h://alice:open-sesame@{}", socks.addr);
    let r = curl(&["--proxy", &good, "http://dev1:8080/"]).await;
    assert!(r.ok, "curl failed: {}", r.stderr);
    assert_eq!(r.stdout_str(), "hello from dev1");
    let bad = format!("socks5h://alice:wrong@{}", socks.addr);
    let r = curl(&["--proxy", &bad, "http://dev1:8080/"]).await;
    assert!(!r.ok, "a wrong password must be refused");
    let none = format!("socks5h://{}", socks.addr);
    let r = curl(&["--proxy", &none, "http://dev1:8080/"]).await;
    assert!(!r.ok, "no credentials must be refused");
}

#[tokio::test]
async fn ncat_through_warren_socks_as_ssh_proxycommand() {
    let w = World::start().await;
    let mut socks = Socks::start(w.settings(), None).await;
    socks.connected().await;
    let known = w.known_hosts("dev1");
    let r = run(
        Command::new("ssh")
            .args(w.ssh_opts(&known))
            .arg("-o")
            .arg(format!(
                "ProxyCommand=ncat --proxy-type socks5 --proxy {} %h %p",
                socks.addr
            ))
            .arg(format!("{}@dev1", login_user()))
            .arg("echo via-ncat"),
        LIMIT,
    )
    .await;
    assert!(r.ok, "ssh via ncat failed: {}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "via-ncat");
}

#[tokio::test]
async fn socks_comes_back_after_a_relay_restart() {
    let mut w = World::start().await;
    let mut socks = Socks::start(w.settings(), None).await;
    socks.connected().await;
    let proxy = socks.addr.to_string();
    w.relay = w.relay.restart().await;
    w.agent.online().await;
    socks.connected().await;
    let r = curl(&["--socks5-hostname", &proxy, "http://dev1:8080/"]).await;
    assert!(r.ok, "curl after restart failed: {}", r.stderr);
    assert_eq!(r.stdout_str(), "hello from dev1");
}

#[tokio::test]
async fn warren_socks_refuses_an_open_listener() {
    let w = World::start().await;
    let mut flags = w.client_flags();
    flags.extend(["--listen".into(), "0.0.0.0:0".into()]);
    let r = run(Command::new(WARREN).arg("socks").args(&flags), LIMIT).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("without authentication"), "{}", r.stderr);
}

/// Sends a line through `addr` to the echo target and reads it back.
async fn echo_via(addr: std::net::SocketAddr, msg: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}

#[tokio::test]
async fn forwards_over_a_host_range_survive_a_relay_restart() {
    let mut relay = TestRelay::start().await;
    relay.add_system("tau");
    let echo = echo_server().await;
    let mut agents = Vec::new();
    for d in ["red001", "red002", "red003"] {
        agents.push(
            relay
                .device("tau", d, &[format!("80=127.0.0.1:{echo}")])
                .await,
        );
    }
    let key = relay.add_key("tau", Role::Controller, "alice");
    let settings = ClientSettings {
        relay: relay.addr.to_string(),
        system: name("tau"),
        key_path: PathBuf::from("unused"),
        key,
        relay_host_key: relay.host_key(),
        socks_auth: None,
        relay_ca: None,
    };
    let planned = forward::plan(
        &["red00[1-3]:80=127.0.0.1:0".to_string()],
        None,
        "127.0.0.1".parse().unwrap(),
    )
    .unwrap();
    let bound = forward::bind(&planned).await.unwrap();
    let table: Vec<forward::Forward> = bound.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(
        table.iter().map(|f| f.device.as_str()).collect::<Vec<_>>(),
        vec!["red001", "red002", "red003"]
    );
    assert!(table.iter().all(|f| f.listen.port() != 0 && f.port == 80));
    let stop = CancellationToken::new();
    let (tx, mut events) = mpsc::unbounded_channel();
    let tunnel = Arc::new(Tunnel::start(settings, stop.clone(), Some(tx)));
    tokio::spawn(forward::serve(bound, tunnel.clone(), stop.clone()));
    let _stop = stop.drop_guard();
    for f in &table {
        assert_eq!(
            echo_via(f.listen, &format!("to {}", f.device)).await,
            format!("to {}", f.device)
        );
    }

    relay = relay.restart().await;
    loop {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(e, TunnelEvent::Disconnected { .. }) {
            break;
        }
    }
    for a in &mut agents {
        a.online().await;
    }
    // The listeners stayed up: a connection made now waits for the relay.
    for f in &table {
        assert_eq!(echo_via(f.listen, "again").await, "again");
    }
    assert!(tunnel.is_connected());
    drop(relay);
}

#[tokio::test]
async fn warren_forward_prints_its_table_and_carries_streams() {
    let w = World::start().await;
    let mut child = tokio::process::Command::new(WARREN)
        .arg("forward")
        .args(w.client_flags())
        .args(["--json", "dev1:8080=127.0.0.1:0", "dev1:22=127.0.0.1:0"])
        .env("WARREN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = wait_for_line(stdout, "[", "warren forward").await;
    let table: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(table[0]["device"], "dev1");
    assert_eq!(table[0]["port"], 8080);
    assert_eq!(table[1]["port"], 22);
    let web: std::net::SocketAddr = table[0]["listen"].as_str().unwrap().parse().unwrap();
    let r = curl(&[&format!("http://{web}/")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str(), "hello from dev1");
    assert_ne!(web.port(), w.web, "a local port of its own");
}

#[tokio::test]
async fn warren_forward_rejects_a_malformed_range() {
    let w = World::start().await;
    let r = run(
        Command::new(WARREN)
            .arg("forward")
            .args(w.client_flags())
            .args(["node[01-10:22", "--start-port", "2200"]),
        LIMIT,
    )
    .await;
    assert!(!r.ok);
    assert!(r.stderr.contains("without ']'"), "{}", r.stderr);
}

#[tokio::test]
async fn generated_ssh_config_works_with_plain_ssh_scp_and_rsync() {
    let w = World::start().await;
    let user = login_user();
    let mut args: Vec<String> = vec!["ssh-config".into(), "dev1".into(), "--user".into(), user];
    args.extend(w.client_flags());
    let generated = warren_ok(&args).await;
    assert!(generated.contains("Host dev1\n"), "{generated}");
    assert!(
        generated.contains("HostKeyAlias dev1.tau.warren"),
        "{generated}"
    );
    // --all asks the relay which devices exist.
    let mut all: Vec<String> = vec!["ssh-config".into(), "--all".into()];
    all.extend(w.client_flags());
    assert!(warren_ok(&all).await.contains("Host dev1\n"));

    // What a person has in ~/.ssh/config anyway: their key, their known_hosts.
    let known = w.known_hosts("dev1.tau.warren");
    let config = write_file(
        w.dir.path(),
        "ssh_config",
        &format!(
            "{generated}\nHost *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  \
             StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n",
            w.sshd.user_key.display(),
            known.display()
        ),
    );
    let cfg = config.to_string_lossy().to_string();
    let r = run(
        Command::new("ssh").args(["-F", &cfg, "dev1", "true"]),
        LIMIT,
    )
    .await;
    assert!(r.ok, "ssh -F generated dev1 true: {}", r.stderr);

    let payload = write_file(w.dir.path(), "payload", "bytes for scp\n");
    let remote = w.dir.path().join("arrived");
    let r = run(
        // -O: the legacy scp protocol; the test sshd has no sftp subsystem.
        Command::new("scp").args([
            "-O",
            "-F",
            &cfg,
            &payload.to_string_lossy(),
            &format!("dev1:{}", remote.display()),
        ]),
        LIMIT,
    )
    .await;
    assert!(r.ok, "scp: {}", r.stderr);
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "bytes for scp\n");

    let synced = w.dir.path().join("synced");
    let r = run(
        Command::new("rsync").args([
            "-e",
            &format!("ssh -F {cfg}"),
            &format!("dev1:{}", remote.display()),
            &synced.to_string_lossy(),
        ]),
        LIMIT,
    )
    .await;
    assert!(r.ok, "rsync: {}", r.stderr);
    assert_eq!(std::fs::read_to_string(&synced).unwrap(), "bytes for scp\n");
}

#[tokio::test]
async fn connect_script_reaches_the_device() {
    let w = World::start().await;
    let out = w.dir.path().join("scripts");
    std::fs::create_dir(&out).unwrap();
    let mut args: Vec<String> = vec![
        "connect-script".into(),
        "dev1".into(),
        "--user".into(),
        login_user(),
        "--dir".into(),
        out.to_string_lossy().into(),
    ];
    args.extend(w.client_flags());
    warren_ok(&args).await;
    let bat = std::fs::read_to_string(out.join("connect.bat")).unwrap();
    assert!(bat.contains("%%h %%p"), "{bat}");
    assert!(bat.contains(&w.relay.host_key()), "{bat}");
    let known = w.known_hosts("dev1.tau.warren");
    let r = run(
        Command::new(out.join("connect.sh"))
            .args(w.ssh_opts(&known))
            .arg("echo via-connect-sh"),
        LIMIT,
    )
    .await;
    assert!(r.ok, "connect.sh: {}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "via-connect-sh");
}
