//! The relay's offered ciphers and key exchanges (`--ciphers`,
//! `--kex-algorithms`, the config file's `ciphers`/`kex_algorithms`) and the
//! post-quantum hybrid `mlkem768x25519-sha256` with real OpenSSH clients:
//! the system's (9.2, no ML-KEM) and OpenSSH 10 from bookworm-backports,
//! which `scripts/openssh10` unpacks under `target/openssh10/`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cli::{RelayProcess, warren};
use common::openssh::{Ran, Sshd, login_user, run};
use common::*;
use tokio::process::Command;
use warren::protocol::Role;
use warren::relay::RelayOptions;

const LIMIT: Duration = Duration::from_secs(60);

/// The OpenSSH 10 client: `$WARREN_OPENSSH10` (set by `scripts/test`) or
/// where `scripts/openssh10` unpacks it. Missing is a failure, not a skip.
fn openssh10() -> PathBuf {
    let path = std::env::var_os("WARREN_OPENSSH10")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openssh10/usr/bin/ssh")
        });
    assert!(
        path.is_file(),
        "no OpenSSH 10 client at {}: run `bash scripts/openssh10` (as root) first",
        path.display()
    );
    path
}

/// A relay (with `options`), a device `dev1` whose port 22 is a real sshd,
/// and an ssh config for controller alice in system tau.
struct World {
    relay: TestRelay,
    _sshd: Sshd,
    _agent: TestAgent,
    _dir: tempfile::TempDir,
    config: PathBuf,
    user: String,
}

impl World {
    async fn start(options: RelayOptions) -> World {
        let relay = TestRelay::start_with(RelayOptions {
            store_poll: Duration::from_millis(100),
            ..options
        })
        .await;
        relay.add_system("tau");
        let sshd = Sshd::start().await;
        let dir = tempfile::tempdir().unwrap();
        let alice = relay.add_key_file(dir.path(), "tau", Role::Controller, "alice");
        let dev = relay.add_key("tau", Role::Device, "dev1");
        let mut agent = TestAgent::start(relay.agent_settings(
            "tau",
            "dev1",
            dev,
            &[format!("22=127.0.0.1:{}", sshd.port)],
        ));
        agent.online().await;
        let user = login_user();
        let known = write_file(
            dir.path(),
            "known_hosts",
            &format!("{}\ndev1 {}\n", relay.known_hosts_line(), sshd.host_pub),
        );
        let config = write_file(
            dir.path(),
            "ssh_config",
            &format!(
                "Host 127.0.0.1\n  IdentityFile {alice}\n\
                 Host dev1\n  User {user}\n  IdentityFile {userkey}\n\
                 Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
                 UserKnownHostsFile {known}\n  ConnectTimeout 20\n",
                alice = alice.display(),
                userkey = sshd.user_key.display(),
                known = known.display(),
            ),
        );
        World {
            relay,
            _sshd: sshd,
            _agent: agent,
            _dir: dir,
            config,
            user,
        }
    }

    /// `SSH -v -F CONFIG ARGS… -J tau@relay user@dev1 echo reached`: the
    /// stderr of -v names the negotiated algorithms of both legs.
    async fn jump(&self, ssh: &std::path::Path, args: &[&str]) -> Ran {
        run(
            Command::new(ssh)
                .arg("-v")
                .arg("-F")
                .arg(&self.config)
                .args(args)
                .arg("-J")
                .arg(format!("tau@127.0.0.1:{}", self.relay.addr.port()))
                .arg(format!("{}@dev1", self.user))
                .arg("echo reached"),
            LIMIT,
        )
        .await
    }
}

#[tokio::test]
async fn openssh_10_negotiates_mlkem768x25519_with_the_relay() {
    let ssh10 = openssh10();
    let w = World::start(RelayOptions::default()).await;
    let r = w.jump(&ssh10, &[]).await;
    assert!(r.ok, "OpenSSH 10 through the relay: {}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "reached");
    assert!(
        r.stderr.contains("OpenSSH_10"),
        "not an OpenSSH 10 client: {}",
        r.stderr
    );
    // The device's sshd is the system's 9.2, which has no ML-KEM: the
    // hybrid can only have been negotiated on the relay leg.
    assert!(
        r.stderr.contains("kex: algorithm: mlkem768x25519-sha256"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn warren_agents_and_clients_negotiate_mlkem768x25519_with_the_relay() {
    let relay = TestRelay::start().await;
    relay.add_system("tau");
    let key = relay.add_key("tau", Role::Controller, "alice");
    let conn = connect_to(&relay.addr.to_string(), &relay.host_key(), "tau", key)
        .await
        .unwrap();
    assert_eq!(conn.key_exchange(), Some("mlkem768x25519-sha256"));
    let out = conn.exec("ls").await.unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    // A relay limited to curve25519 still serves Warren's clients.
    let relay = TestRelay::start_with(RelayOptions {
        kex_algorithms: "-mlkem768x25519-sha256".parse().unwrap(),
        ..RelayOptions::default()
    })
    .await;
    relay.add_system("tau");
    let key = relay.add_key("tau", Role::Controller, "alice");
    let conn = connect_to(&relay.addr.to_string(), &relay.host_key(), "tau", key)
        .await
        .unwrap();
    assert_eq!(conn.key_exchange(), Some("curve25519-sha256"));
}

#[tokio::test]
async fn a_client_offering_only_curve25519_still_works() {
    let w = World::start(RelayOptions::default()).await;
    for kex in ["curve25519-sha256", "curve25519-sha256@libssh.org"] {
        let r = w
            .jump(
                std::path::Path::new("ssh"),
                &["-o", &format!("KexAlgorithms={kex}")],
            )
            .await;
        assert!(r.ok, "{kex}: {}", r.stderr);
        assert_eq!(r.stdout_str().trim(), "reached");
        assert!(
            r.stderr.contains(&format!("kex: algorithm: {kex}\n"))
                || r.stderr.contains(&format!("kex: algorithm: {kex}\r\n")),
            "{kex}: {}",
            r.stderr
        );
    }
}

#[tokio::test]
async fn a_relay_offering_only_curve25519_is_what_openssh_10_gets() {
    let ssh10 = openssh10();
    let w = World::start(RelayOptions {
        kex_algorithms: "curve25519-sha256".parse().unwrap(),
        ..RelayOptions::default()
    })
    .await;
    let r = w.jump(&ssh10, &[]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("kex: algorithm: curve25519-sha256"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("kex: algorithm: mlkem768x25519-sha256"),
        "{}",
        r.stderr
    );
}

/// `ssh -v -c CIPHER -p PORT tau@127.0.0.1 ls` with no key: the key
/// exchange either finds a common cipher (and authentication then fails)
/// or stops at "no matching cipher".
async fn ssh_with_cipher(port: u16, cipher: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    run(
        Command::new("ssh")
            .args(["-v", "-F", "/dev/null", "-c", cipher])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                dir.path().join("known").display()
            ))
            .args(["-o", "IdentityFile=/dev/null", "-o", "IdentitiesOnly=yes"])
            .args(["-p", &port.to_string(), "tau@127.0.0.1", "ls"]),
        LIMIT,
    )
    .await
}

#[tokio::test]
async fn a_relay_without_chacha20_refuses_ssh_c_chacha20_and_accepts_aes() {
    let data = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(
        &[],
        0,
        &["--ciphers", "-chacha20-poly1305@openssh.com"],
        data.path(),
    )
    .await;
    let r = ssh_with_cipher(relay.port, "chacha20-poly1305@openssh.com").await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no matching cipher found"),
        "{}",
        r.stderr
    );
    for cipher in ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"] {
        let r = ssh_with_cipher(relay.port, cipher).await;
        // Past the key exchange: refused only for want of a key.
        assert!(
            r.stderr
                .contains(&format!("kex: server->client cipher: {cipher}")),
            "{cipher}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    }
    // The same relay in a config file, with the order honoured: aes256
    // first, so a client offering both in the other order still gets its
    // own first choice (the client's order decides), and one offering
    // chacha20 first gets aes256.
    let cfg = data.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "ciphers = \"aes256-gcm@openssh.com,aes128-gcm@openssh.com\"\n",
    )
    .unwrap();
    let data2 = tempfile::tempdir().unwrap();
    let relay2 =
        RelayProcess::start(&[], 0, &["--config", cfg.to_str().unwrap()], data2.path()).await;
    let r = ssh_with_cipher(
        relay2.port,
        "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com",
    )
    .await;
    assert!(
        r.stderr
            .contains("kex: server->client cipher: aes256-gcm@openssh.com"),
        "{}",
        r.stderr
    );
    let r = ssh_with_cipher(relay2.port, "chacha20-poly1305@openssh.com").await;
    assert!(
        r.stderr.contains("no matching cipher found"),
        "{}",
        r.stderr
    );
    drop((relay, relay2));
}

#[tokio::test]
async fn a_relay_refuses_unknown_algorithm_names_at_start_with_the_known_ones() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    for (args, known) in [
        (
            vec!["--ciphers", "aes128-gcm@openssh.com,aes128-ctr"],
            "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-gcm@openssh.com",
        ),
        (
            vec!["--kex-algorithms", "sntrup761x25519-sha512"],
            "mlkem768x25519-sha256,curve25519-sha256,curve25519-sha256@libssh.org",
        ),
    ] {
        let mut all = vec!["relay", "--listen", "127.0.0.1:0", "--data", d];
        all.extend(args.iter().copied());
        // Bounded by a time limit: a relay that started would not exit.
        let out = warren(&all).await;
        let err = &out.stderr;
        assert!(!out.ok, "{args:?} started");
        assert!(
            err.contains("unknown") && err.contains(known),
            "{args:?}: {err}"
        );
    }
    let cfg = data.path().join("relay.toml");
    std::fs::write(&cfg, "kex_algorithms = \"diffie-hellman-group1-sha1\"\n").unwrap();
    let out = warren(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        d,
    ])
    .await;
    let err = &out.stderr;
    assert!(!out.ok);
    assert!(
        err.contains("kex_algorithms")
            && err.contains("diffie-hellman-group1-sha1")
            && err.contains("mlkem768x25519-sha256,curve25519-sha256"),
        "{err}"
    );
}
