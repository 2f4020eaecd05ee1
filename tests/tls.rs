//! One port 443 (issue 20): SSH inside TLS and inside a WebSocket, next to
//! the console's HTTPS, with a CA made here by rcgen. Each test starts its
//! relay, TLS port, proxies and OpenSSH processes on ports of its own.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use common::openssh::{Sshd, login_user, run};
use common::tls::{Pki, make_ca, make_pki};
use common::{TestAgent, TestRelay, echo_server, echo_through, write_file};
use warren::protocol::Role;
use warren::ssh::client::{self, ClientConnection, ConnectOptions, HostKeyMismatch, NoForwards};
use warren::ssh::keys::PrivateKey;
use warren::transport::proxy::ProxyUrl;
use warren::transport::{self as transport, DialError, DialOptions, ProxyChoice};

const LIMIT: Duration = Duration::from_secs(60);
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// A relay with its TLS port (console on) and the PKI it uses.
struct Lab {
    relay: TestRelay,
    tls: SocketAddr,
    pki: Pki,
    dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Lab {
    async fn start() -> Lab {
        let relay = TestRelay::start().await;
        relay.add_system("tau");
        let dir = tempfile::tempdir().unwrap();
        let pki = make_pki(dir.path(), &["localhost", "127.0.0.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = listener.local_addr().unwrap();
        let certs = warren::transport::tls::CertFiles::load(&pki.cert, &pki.key).unwrap();
        let front = warren::front::Front {
            certs,
            web: Some(warren::web::Web {
                relay: relay.relay.clone(),
                secure: true,
            }),
        };
        let stop = CancellationToken::new();
        tokio::spawn(warren::front::serve(
            relay.relay.clone(),
            listener,
            front,
            stop.clone(),
        ));
        Lab {
            relay,
            tls,
            pki,
            dir,
            stop,
        }
    }

    fn tls_url(&self) -> String {
        format!("tls://localhost:{}", self.tls.port())
    }

    fn wss_url(&self) -> String {
        format!("wss://localhost:{}/ssh", self.tls.port())
    }

    fn dial_options(&self) -> DialOptions {
        DialOptions {
            ca: Some(self.pki.ca.clone()),
            proxy: ProxyChoice::Direct,
            ..Default::default()
        }
    }

    /// An agent of `dev` reaching the relay at `url`, serving `allow`.
    async fn device(&self, url: &str, dev: &str, allow: &[String]) -> TestAgent {
        let key = self.relay.add_key("tau", Role::Device, dev);
        let mut settings = self.relay.agent_settings("tau", dev, key, allow);
        settings.relay = url.to_string();
        settings.relay_ca = Some(self.pki.ca.clone());
        let mut agent = TestAgent::start(settings);
        agent.online().await;
        self.relay.wait_online("tau", dev, true).await;
        agent
    }

    /// A controller connection to the relay at `url` with `o`.
    async fn controller(
        &self,
        url: &str,
        o: &DialOptions,
        key: Arc<PrivateKey>,
    ) -> anyhow::Result<ClientConnection<NoForwards>> {
        let socket = transport::dial(url, o).await?;
        let opts = ConnectOptions {
            user: "tau".into(),
            key,
            host_key: self.relay.host_key(),
            dead_after: Duration::from_secs(10),
        };
        client::connect(socket, &opts, NoForwards).await
    }
}

#[tokio::test]
async fn agents_register_over_tls_and_websocket_and_streams_cross_them() {
    let lab = Lab::start().await;
    let port = echo_server().await;
    let allow = [format!("127.0.0.1:{port}")];
    let _a = lab.device(&lab.tls_url(), "dev-tls", &allow).await;
    let _b = lab.device(&lab.wss_url(), "dev-wss", &allow).await;
    let alice = lab.relay.add_key("tau", Role::Controller, "alice");
    for url in [lab.tls_url(), lab.wss_url(), lab.tls.to_string()] {
        // The last: plain SSH spoken to the TLS port (first bytes `SSH-`).
        let conn = lab
            .controller(&url, &lab.dial_options(), alice.clone())
            .await
            .unwrap();
        for dev in ["dev-tls", "dev-wss"] {
            let data = common::pseudo_random(300_000);
            let back = echo_through(&conn, dev, port, &data).await.unwrap();
            assert!(back == data, "{dev} through {url}: bytes differ");
        }
    }
}

#[tokio::test]
async fn curl_gets_the_console_over_https_and_h2_from_the_same_port() {
    let lab = Lab::start().await;
    let url = format!("https://localhost:{}/", lab.tls.port());
    for (version, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let r = common::openssh::curl(&[
            "-sS",
            version,
            "--cacert",
            common::cli::p(&lab.pki.ca),
            "-w",
            "\n%{http_code} %{http_version}",
            &format!("{url}api/v1/session"),
        ])
        .await;
        assert!(r.ok, "{}", r.stderr);
        let out = r.stdout_str();
        // The API's own answer: no session cookie, so 401 in its JSON.
        assert!(out.ends_with(&format!("401 {want}")), "{out}");
        assert!(out.contains("\"error\""), "{out}");
    }
    // /ssh without an upgrade is told what it is for.
    let r = common::openssh::curl(&[
        "-sS",
        "--cacert",
        common::cli::p(&lab.pki.ca),
        &format!("{url}ssh"),
    ])
    .await;
    assert!(r.stdout_str().contains("WebSocket"), "{}", r.stdout_str());
    // Without the CA, curl refuses the certificate as a browser would.
    let r = common::openssh::curl(&["-sS", &url]).await;
    assert!(!r.ok);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_its_names() {
    let lab = Lab::start().await;
    let (other_ca, _) = make_ca(lab.dir.path(), "some other CA", "other.pem");
    let o = DialOptions {
        ca: Some(other_ca.clone()),
        proxy: ProxyChoice::Direct,
        ..Default::default()
    };
    for url in [lab.tls_url(), lab.wss_url()] {
        let e = transport::dial(&url, &o).await.unwrap_err();
        let DialError::CertUntrusted {
            subject, issuer, ..
        } = &e
        else {
            panic!("{url}: {e}");
        };
        assert_eq!(subject, "CN=relay.test");
        assert_eq!(issuer, "CN=warren test CA");
        assert!(
            e.to_string().starts_with(
                "TLS: the certificate of localhost is not trusted (signed by an unknown issuer)"
            ),
            "{e}"
        );
    }
    // The same from the command line, as a person reads it.
    let dir = lab.dir.path();
    let key = lab.relay.add_key_file(dir, "tau", Role::Controller, "bob");
    let out = Command::new(WARREN)
        .args(["ls", "--relay", &lab.tls_url(), "--system", "tau", "--key"])
        .arg(&key)
        .args(["--relay-host-key", &lab.relay.host_key(), "--ca"])
        .arg(&other_ca)
        .env("XDG_CONFIG_HOME", dir.join("no-xdg"))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not trusted"), "{err}");
    assert!(err.contains("issuer CN=warren test CA"), "{err}");
}

#[tokio::test]
async fn a_wrong_host_key_pin_is_refused_at_the_ssh_layer_over_tls() {
    let lab = Lab::start().await;
    let alice = lab.relay.add_key("tau", Role::Controller, "alice");
    let socket = transport::dial(&lab.tls_url(), &lab.dial_options())
        .await
        .unwrap();
    let opts = ConnectOptions {
        user: "tau".into(),
        key: alice,
        host_key: format!("SHA256:{}", "B".repeat(43)),
        dead_after: Duration::from_secs(10),
    };
    let e = client::connect(socket, &opts, NoForwards)
        .await
        .err()
        .unwrap();
    let m = e.downcast_ref::<HostKeyMismatch>().expect("typed mismatch");
    assert_eq!(m.presented, lab.relay.host_key());
    assert!(
        e.to_string().starts_with("SSH: relay host key mismatch"),
        "{e}"
    );
}

/// A TLS-terminating proxy that offers and asks no ALPN: it answers the
/// client with its own TLS (the relay's certificate, as a corporate proxy
/// with its CA installed would) and opens a new TLS connection to the
/// relay without ALPN.
async fn alpn_stripping_proxy(lab: &Lab) -> (SocketAddr, CancellationToken) {
    let certs = warren::transport::tls::CertFiles::load(&lab.pki.cert, &lab.pki.key).unwrap();
    let server = Arc::new(certs.server_config(&[]).unwrap());
    let client = warren::transport::tls::client_config(Some(&lab.pki.ca), &[]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, relay) = (CancellationToken::new(), lab.tls);
    let done = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = done.cancelled() => return,
                a = l.accept() => a.unwrap(),
            };
            let (server, client) = (server.clone(), client.clone());
            tokio::spawn(async move {
                let Ok(mut inner) = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await
                else {
                    return;
                };
                assert_eq!(inner.get_ref().1.alpn_protocol(), None);
                let up = TcpStream::connect(relay).await.unwrap();
                let mut outer = warren::transport::tls::connect(client, "localhost", up)
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
            });
        }
    });
    (addr, stop)
}

#[tokio::test]
async fn a_proxy_that_strips_alpn_still_passes_the_websocket_path() {
    let lab = Lab::start().await;
    let (proxy, stop) = alpn_stripping_proxy(&lab).await;
    let _guard = stop.drop_guard();
    let via = proxy.port();
    // SSH inside TLS needs ALPN: the error says so and names the way out.
    let e = transport::dial(&format!("tls://localhost:{via}"), &lab.dial_options())
        .await
        .unwrap_err();
    assert!(matches!(e, DialError::AlpnNotOffered { .. }), "{e}");
    assert!(e.to_string().contains("wss://localhost/ssh"), "{e}");
    // The WebSocket path goes through, for an agent and a controller.
    let port = echo_server().await;
    let url = format!("wss://localhost:{via}/ssh");
    let _agent = lab
        .device(&url, "dev1", &[format!("127.0.0.1:{port}")])
        .await;
    let alice = lab.relay.add_key("tau", Role::Controller, "alice");
    let conn = lab
        .controller(&url, &lab.dial_options(), alice)
        .await
        .unwrap();
    assert_eq!(
        echo_through(&conn, "dev1", port, b"through").await.unwrap(),
        b"through"
    );
}

/// Debian's tinyproxy, its own config in a tempdir: CONNECT only to
/// `connect_port`, with Basic credentials if given. Killed on drop.
struct Tinyproxy {
    port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    async fn start(connect_port: u16, auth: Option<(&str, &str)>) -> Tinyproxy {
        let bin = "/usr/bin/tinyproxy";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install tinyproxy (scripts/test does this)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = common::closed_port().await;
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nAllow 127.0.0.1\n\
             ConnectPort {connect_port}\nLogLevel Info\nLogFile \"{}\"\n",
            dir.path().join("log").display()
        );
        if let Some((u, p)) = auth {
            conf.push_str(&format!("BasicAuth {u} {p}\n"));
        }
        let cfg = write_file(dir.path(), "tinyproxy.conf", &conf);
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Listening once a connection is taken (waited on, with a limit).
        tokio::time::timeout(LIMIT, async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("tinyproxy listening");
        Tinyproxy {
            port,
            _child: child,
            _dir: dir,
        }
    }

    fn url(&self, auth: Option<&str>) -> ProxyUrl {
        let creds = auth.map(|a| format!("{a}@")).unwrap_or_default();
        ProxyUrl::parse(&format!("http://{creds}127.0.0.1:{}", self.port)).unwrap()
    }
}

#[tokio::test]
async fn tinyproxy_carries_tls_and_websockets_with_and_without_credentials() {
    let lab = Lab::start().await;
    let port = echo_server().await;
    let _agent = lab
        .device(&lab.tls_url(), "dev1", &[format!("127.0.0.1:{port}")])
        .await;
    let alice = lab.relay.add_key("tau", Role::Controller, "alice");
    let open = Tinyproxy::start(lab.tls.port(), None).await;
    let authed = Tinyproxy::start(lab.tls.port(), Some(("warren", "s3cret"))).await;
    let via = |url: ProxyUrl| DialOptions {
        proxy: ProxyChoice::Use(url),
        ..lab.dial_options()
    };
    for (proxy, auth) in [(&open, None), (&authed, Some("warren:s3cret"))] {
        for url in [lab.tls_url(), lab.wss_url()] {
            let conn = lab
                .controller(&url, &via(proxy.url(auth)), alice.clone())
                .await
                .unwrap();
            assert_eq!(
                echo_through(&conn, "dev1", port, b"proxied").await.unwrap(),
                b"proxied"
            );
        }
    }
    // No or wrong credentials: the proxy's status, named.
    for auth in [None, Some("warren:wrong")] {
        let e = transport::dial(&lab.tls_url(), &via(authed.url(auth)))
            .await
            .unwrap_err();
        assert!(matches!(e, DialError::ProxyRefused { .. }), "{e}");
        // tinyproxy answers 401 where RFC 9110 says 407; either is named.
        let text = e.to_string();
        assert!(
            text.contains(": 401 Unauthorized") || text.contains(": 407"),
            "{e}"
        );
    }
    // Only the TLS port may be reached through it.
    let other = format!("tls://localhost:{}", lab.relay.addr.port());
    let e = transport::dial(&other, &via(open.url(None)))
        .await
        .unwrap_err();
    assert!(matches!(e, DialError::ProxyRefused { .. }), "{e}");
    assert!(e.to_string().contains(": 403"), "{e}");

    // The agent binary takes the proxy from HTTPS_PROXY.
    let dir = lab.dir.path();
    let key = lab.relay.add_key_file(dir, "tau", Role::Device, "dev2");
    let cfg = write_file(
        dir,
        "agent.toml",
        &format!(
            "relay = \"{}\"\nrelay_ca = \"{}\"\nsystem = \"tau\"\nname = \"dev2\"\nkey = \"{}\"\n\
             relay_host_key = \"{}\"\nallow = [\"127.0.0.1:{port}\"]\np2p = false\n",
            lab.wss_url(),
            lab.pki.ca.display(),
            key.display(),
            lab.relay.host_key()
        ),
    );
    let _agent2 = Command::new(WARREN)
        .args(["agent", "--config"])
        .arg(&cfg)
        .env(
            "HTTPS_PROXY",
            format!("http://warren:s3cret@127.0.0.1:{}", authed.port),
        )
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    lab.relay.wait_online("tau", "dev2", true).await;
    let log = std::fs::read_to_string(authed._dir.path().join("log")).unwrap_or_default();
    assert!(log.contains("CONNECT"), "tinyproxy saw no CONNECT: {log}");
}

/// `warren ssh-config --tls` for dev1 over wss://, completed into an ssh
/// config with the device's login key and known host.
async fn generated_config(lab: &Lab, sshd: &Sshd) -> PathBuf {
    let dir = lab.dir.path();
    let alice = lab
        .relay
        .add_key_file(dir, "tau", Role::Controller, "alice");
    let user = login_user();
    let r = run(
        Command::new(WARREN)
            .args([
                "ssh-config",
                "--tls",
                "--relay",
                &lab.wss_url(),
                "--system",
                "tau",
            ])
            .arg("--key")
            .arg(&alice)
            .args(["--relay-host-key", &lab.relay.host_key(), "--ca"])
            .arg(&lab.pki.ca)
            .args(["--user", &user, "dev1"])
            .env("XDG_CONFIG_HOME", dir.join("no-xdg")),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let stanza = r.stdout_str();
    assert!(
        stanza.contains(&format!("--relay {} ", lab.wss_url())),
        "{stanza}"
    );
    let known = write_file(
        dir,
        "known_hosts",
        &format!("dev1.tau.warren {}\n", sshd.host_pub),
    );
    write_file(
        dir,
        "ssh_config",
        &format!(
            "{stanza}Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  \
             StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n",
            sshd.user_key.display(),
            known.display()
        ),
    )
}

#[tokio::test]
async fn stock_ssh_with_the_generated_stanza_runs_scp_and_rsync() {
    let lab = Lab::start().await;
    let sshd = Sshd::start().await;
    let _agent = lab
        .device(
            &lab.tls_url(),
            "dev1",
            &[format!("22=127.0.0.1:{}", sshd.port)],
        )
        .await;
    let config = generated_config(&lab, &sshd).await;
    let dir = lab.dir.path();
    let r = run(
        Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .args(["dev1", "echo over-wss"]),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "over-wss");

    let data = common::pseudo_random(3 * 1024 * 1024 + 17);
    let src = dir.join("blob");
    std::fs::write(&src, &data).unwrap();
    let scp_dst = dir.join("via-scp");
    let r = run(
        // -O: the scp protocol (the test's sshd has no sftp subsystem).
        Command::new("scp")
            .arg("-O")
            .arg("-F")
            .arg(&config)
            .arg(&src)
            .arg(format!("dev1:{}", scp_dst.display())),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        std::fs::read(&scp_dst).unwrap() == data,
        "scp: bytes differ"
    );
    let rsync_dst = dir.join("via-rsync");
    let r = run(
        Command::new("rsync")
            .arg("-e")
            .arg(format!("ssh -F {}", config.display()))
            .arg(&src)
            .arg(format!("dev1:{}", rsync_dst.display())),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        std::fs::read(&rsync_dst).unwrap() == data,
        "rsync: bytes differ"
    );
}

#[tokio::test]
async fn stock_ssh_reaches_the_relay_itself_through_warren_proxy_tls_and_openssl() {
    let lab = Lab::start().await;
    let dir = lab.dir.path();
    let alice = lab
        .relay
        .add_key_file(dir, "tau", Role::Controller, "alice");
    let known = write_file(
        dir,
        "known_hosts",
        &format!(
            "relay.warren {}\n",
            lab.relay.known_hosts_line().split_once(' ').unwrap().1
        ),
    );
    let port = lab.tls.port();
    let proxies = [
        format!(
            "{WARREN} proxy --tls --relay {} --ca {}",
            lab.tls_url(),
            lab.pki.ca.display()
        ),
        format!(
            "{WARREN} proxy --tls --relay {} --ca {}",
            lab.wss_url(),
            lab.pki.ca.display()
        ),
        format!(
            "openssl s_client -quiet -verify_return_error -CAfile {} -servername localhost \
             -alpn warren-ssh -connect 127.0.0.1:{port}",
            lab.pki.ca.display()
        ),
    ];
    for proxy in proxies {
        let r = run(
            common::openssh::stock_ssh(&known, &alice)
                .arg("-o")
                .arg(format!("ProxyCommand={proxy}"))
                .args(["-o", "HostKeyAlias=relay.warren", "tau@relay", "ls"]),
            LIMIT,
        )
        .await;
        assert!(r.ok, "{proxy}: {}", r.stderr);
    }
}

#[tokio::test]
async fn a_reloaded_certificate_is_served_to_new_connections() {
    let lab = Lab::start().await;
    let certs = warren::transport::tls::CertFiles::load(&lab.pki.cert, &lab.pki.key).unwrap();
    // A new certificate from another CA, written over the files.
    let (other_ca, issuer) = make_ca(lab.dir.path(), "next CA", "next-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(&lab.pki.cert, cert.pem()).unwrap();
    std::fs::write(&lab.pki.key, key.serialize_pem()).unwrap();
    certs.reload().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config(&[b"x"]).unwrap()));
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        let _ = s.write_all(b"ok").await;
        let _ = s.read(&mut [0u8; 1]).await;
    });
    let client = warren::transport::tls::client_config(Some(&other_ca), &[b"x"]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = warren::transport::tls::connect(client, "localhost", tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    // A broken file is refused and the running certificate stays.
    std::fs::write(&lab.pki.key, "not a key").unwrap();
    assert!(certs.reload().is_err());
}

#[tokio::test]
async fn the_relay_binary_serves_tls_from_its_config_file_and_reloads_it_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = make_pki(d, &["localhost"]);
    common::cli::blocking::fails(
        &[
            "relay",
            "--tls",
            "127.0.0.1:0",
            "--data",
            common::cli::p(&d.join("x")),
        ],
        "--tls needs --cert FILE and --key FILE",
    );
    let tls_port = common::closed_port().await;
    let cfg = write_file(
        d,
        "relay.toml",
        &format!(
            "tls = \"127.0.0.1:{tls_port}\"\ntls_cert = \"relay.pem\"\ntls_key = \"relay.key\"\n"
        ),
    );
    let mut relay = common::cli::RelayProcess::start(
        &[],
        0,
        &["--config", common::cli::p(&cfg)],
        &d.join("data"),
    )
    .await;
    let url = format!("tls://localhost:{tls_port}");
    let with = |ca: &Path| DialOptions {
        ca: Some(ca.to_path_buf()),
        proxy: ProxyChoice::Direct,
        ..Default::default()
    };
    transport::dial(&url, &with(&pki.ca)).await.unwrap();
    // A certificate from another CA written over the files, then SIGHUP.
    let (next_ca, issuer) = make_ca(d, "next CA", "next-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    let pid = relay.child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    relay.line(&["TLS certificate reloaded"]).await;
    let e = transport::dial(&url, &with(&pki.ca)).await.unwrap_err();
    assert!(matches!(e, DialError::CertUntrusted { .. }), "{e}");
    transport::dial(&url, &with(&next_ca)).await.unwrap();
}

#[tokio::test]
async fn a_websocket_refused_by_the_server_is_named_with_its_status() {
    let lab = Lab::start().await;
    let url = format!("wss://localhost:{}/nope", lab.tls.port());
    let e = transport::dial(&url, &lab.dial_options())
        .await
        .unwrap_err();
    assert!(matches!(e, DialError::WebSocketRefused { .. }), "{e}");
    assert!(
        e.to_string().ends_with("refused: HTTP 404 Not Found"),
        "{e}"
    );
}

/// `warren admin invite --relay URL` for the lab's relay; returns the token.
async fn tls_invite(lab: &Lab, role: &str, name: &str, url: &str) -> String {
    common::cli::invite_token(lab.relay.dir.path(), role, name, url).await
}

#[tokio::test]
async fn enroll_over_tls_with_a_private_ca_writes_configs_that_work_as_written() {
    let lab = Lab::start().await;
    let port = echo_server().await;
    let dir = lab.dir.path();

    // Without --ca the system's roots do not know the lab's CA: refused,
    // saying so, and nothing written.
    let token = tls_invite(&lab, "device", "dev1", &lab.tls_url()).await;
    let agent_toml = dir.join("dev1/agent.toml");
    let r = run(
        Command::new(WARREN).args(["enroll", &token, "--config", agent_toml.to_str().unwrap()]),
        LIMIT,
    )
    .await;
    assert!(!r.ok);
    assert!(r.stderr.contains("not trusted"), "{}", r.stderr);
    assert!(!agent_toml.exists());

    // With --ca: enrolled, and the config keeps the CA.
    let token = tls_invite(&lab, "device", "dev1", &lab.tls_url()).await;
    let ca = lab.pki.ca.to_str().unwrap();
    common::cli::warren_ok(&[
        "enroll",
        &token,
        "--config",
        agent_toml.to_str().unwrap(),
        "--ca",
        ca,
    ])
    .await;
    let text = std::fs::read_to_string(&agent_toml).unwrap();
    assert!(text.contains(&format!("relay_ca = \"{ca}\"")), "{text}");
    let mut settings = warren::agent::config::AgentSettings::load(&agent_toml).unwrap();
    settings.allow = warren::protocol::AllowList::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let mut agent = TestAgent::start(settings);
    agent.online().await;

    // A controller through the WebSocket path, its client config as written.
    let token = tls_invite(&lab, "controller", "alice", &lab.wss_url()).await;
    let client_toml = dir.join("alice/client.toml");
    common::cli::warren_ok(&[
        "enroll",
        &token,
        "--config",
        client_toml.to_str().unwrap(),
        "--ca",
        ca,
    ])
    .await;
    let settings = warren::client::ClientSettings::resolve(&warren::client::Overrides {
        config: Some(client_toml),
        ..Default::default()
    })
    .unwrap();
    let conn = warren::client::connect(&settings).await.unwrap();
    assert_eq!(
        echo_through(&conn, "dev1", port, b"over 443")
            .await
            .unwrap(),
        b"over 443"
    );
}
