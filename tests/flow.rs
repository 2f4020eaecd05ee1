//! Per-channel flow control and the SSH layer's interop, with stock OpenSSH:
//! a slow stream stalls nobody else, every cipher and key exchange works
//! across rekeys.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::openssh::{Ran, Sshd, login_user, run, spawn};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use warren::protocol::Role;

const LIMIT: Duration = Duration::from_secs(60);

/// Held by every test of this file: two of them bound the process-wide
/// count of buffered bytes (`warren::ssh::buffered_bytes`), and under
/// `cargo test` the tests share one process, so any other test's streams
/// would count in that bound (nextest runs each test in its own process).
static BUFFERED_COUNT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    relay: TestRelay,
    sshd: Sshd,
    _agent: TestAgent,
    dir: tempfile::TempDir,
    alice: PathBuf,
    known: PathBuf,
    user: String,
}

impl World {
    /// A relay and device dev1 (agent) serving the sshd on 22 and `extra`.
    async fn start(extra: &[String]) -> World {
        let relay = TestRelay::start().await;
        relay.add_system("tau");
        let sshd = Sshd::start().await;
        let dir = tempfile::tempdir().unwrap();
        let alice = relay.add_key_file(dir.path(), "tau", Role::Controller, "alice");
        let mut allow = vec![format!("22=127.0.0.1:{}", sshd.port)];
        allow.extend_from_slice(extra);
        let agent = relay.device("tau", "dev1", &allow).await;
        let known = write_file(
            dir.path(),
            "known_hosts",
            &format!("{}\ndev1 {}\n", relay.known_hosts_line(), sshd.host_pub),
        );
        World {
            relay,
            sshd,
            _agent: agent,
            dir,
            alice,
            known,
            user: login_user(),
        }
    }

    /// An ssh config whose relay leg uses `relay_opts` (e.g. `Ciphers X`).
    fn config(&self, relay_opts: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            "ssh_config",
            &format!(
                "Host 127.0.0.1\n  IdentityFile {alice}\n{relay_opts}\
                 Host dev1\n  User {user}\n  IdentityFile {userkey}\n\
                 Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
                 UserKnownHostsFile {known}\n  ConnectTimeout 20\n",
                alice = self.alice.display(),
                user = self.user,
                userkey = self.sshd.user_key.display(),
                known = self.known.display(),
            ),
        )
    }

    fn jump_cmd(&self, config: &Path, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(config)
            .arg("-J")
            .arg(format!("tau@127.0.0.1:{}", self.relay.addr.port()))
            .arg(format!("{}@dev1", self.user))
            .arg(cmd);
        c
    }
}

#[tokio::test]
async fn every_cipher_and_key_exchange_works_with_openssh_across_rekeys() {
    let _count = BUFFERED_COUNT.lock().await;
    let w = World::start(&[]).await;
    let file = w.dir.path().join("blob");
    let data = pseudo_random(6 * 1024 * 1024);
    std::fs::write(&file, &data).unwrap();
    let want = sha256(&data);
    for cipher in [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
    ] {
        for kex in ["curve25519-sha256", "curve25519-sha256@libssh.org"] {
            // The relay leg: forced cipher and kex, a rekey every MiB, and
            // -v so that ssh reports each key exchange.
            let cfg = w.config(&format!(
                "  Ciphers {cipher}\n  KexAlgorithms {kex}\n  RekeyLimit 1M\n  LogLevel DEBUG1\n"
            ));
            let r = run(
                &mut w.jump_cmd(&cfg, &format!("cat {}", file.display())),
                LIMIT,
            )
            .await;
            assert!(r.ok, "{cipher} {kex}: {}", r.stderr);
            assert_eq!(sha256(&r.stdout), want, "{cipher} {kex}: bytes changed");
            let kexes = r.stderr.matches("SSH2_MSG_NEWKEYS received").count();
            // The first exchange and at least three rekeys on the relay leg
            // (the device leg's own exchanges are not logged).
            assert!(
                kexes >= 4,
                "{cipher} {kex}: only {kexes} key exchanges seen:\n{}",
                r.stderr
            );
            assert!(
                r.stderr
                    .contains(&format!("kex: server->client cipher: {cipher}")),
                "{cipher} not negotiated:\n{}",
                r.stderr
            );
        }
    }
}

#[tokio::test]
async fn an_agentless_openssh_device_works_in_every_cipher_across_rekeys() {
    let _count = BUFFERED_COUNT.lock().await;
    let w = World::start(&[]).await;
    let file = w.dir.path().join("blob");
    let data = pseudo_random(4 * 1024 * 1024);
    std::fs::write(&file, &data).unwrap();
    let want = sha256(&data);
    let key = w
        .relay
        .add_key_file(w.dir.path(), "tau", Role::Device, "dev2");
    let known = write_file(
        w.dir.path(),
        "known_hosts",
        &format!(
            "{}\ndev1,dev2 {}\n",
            w.relay.known_hosts_line(),
            w.sshd.host_pub
        ),
    );
    let cfg = write_file(
        w.dir.path(),
        "ssh_config",
        &format!(
            "Host 127.0.0.1\n  IdentityFile {alice}\n\
             Host dev2\n  User {user}\n  IdentityFile {userkey}\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {known}\n  ConnectTimeout 20\n",
            alice = w.alice.display(),
            user = w.user,
            userkey = w.sshd.user_key.display(),
            known = known.display(),
        ),
    );
    for cipher in [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
    ] {
        // The device is stock `ssh -R`, its leg forced to `cipher` and
        // rekeying every MiB.
        let mut device = spawn(
            Command::new("ssh")
                .args(["-F", "/dev/null", "-N", "-v", "-o", "BatchMode=yes"])
                .args(["-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known.display()))
                .arg("-o")
                .arg(format!("Ciphers={cipher}"))
                .args(["-o", "RekeyLimit=1M", "-i"])
                .arg(&key)
                .arg("-R")
                .arg(format!("dev2:22:127.0.0.1:{}", w.sshd.port))
                .arg("-p")
                .arg(w.relay.addr.port().to_string())
                .arg("tau@127.0.0.1"),
        );
        let mut stderr = device.stderr.take().unwrap();
        let log = tokio::spawn(async move {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log).await;
            log
        });
        w.relay.wait_online("tau", "dev2", true).await;
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(&cfg)
            .arg("-J")
            .arg(format!("tau@127.0.0.1:{}", w.relay.addr.port()))
            .arg(format!("{}@dev2", w.user))
            .arg(format!("cat {}", file.display()));
        let r = run(&mut cmd, LIMIT).await;
        assert!(r.ok, "{cipher}: {}", r.stderr);
        assert_eq!(sha256(&r.stdout), want, "{cipher}: bytes changed");
        let _ = device.kill().await;
        let log = tokio::time::timeout(WAIT, log).await.unwrap().unwrap();
        let kexes = log.matches("SSH2_MSG_NEWKEYS received").count();
        assert!(
            kexes >= 4,
            "{cipher}: the device leg saw {kexes} key exchanges:\n{log}"
        );
        w.relay.wait_online("tau", "dev2", false).await;
    }
}

/// A web service that serves `len` bytes to every connection.
async fn big_download(len: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    port
}

/// A service that reads at about `rate` bytes per second and counts.
async fn slow_sink(rate: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; rate / 10];
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    port
}

/// How long a login beside a slow stream may take: 1 s, the bound the README
/// promises on an idle machine. On a machine so loaded that logins with no other
/// traffic at all already take over half a second, twice the slowest of
/// three such logins. A stalled connection takes tens of seconds either way.
async fn login_bound(w: &World, cfg: &Path) -> Duration {
    let mut alone = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let r = run(&mut w.jump_cmd(cfg, "true"), LIMIT).await;
        assert!(r.ok, "login without other traffic: {}", r.stderr);
        alone = alone.max(started.elapsed());
    }
    eprintln!("slowest login without other traffic: {alone:?}");
    Duration::from_secs(1).max(alone * 2)
}

async fn ten_logins_each_under(w: &World, cfg: &Path, bound: Duration) {
    for i in 0..10 {
        let started = Instant::now();
        let r: Ran = run(&mut w.jump_cmd(cfg, "true"), LIMIT).await;
        let took = started.elapsed();
        assert!(r.ok, "login {i}: {}", r.stderr);
        eprintln!("login {i} beside the slow stream: {took:?}");
        assert!(
            took < bound,
            "login {i} took {took:?} beside a slow stream (bound {bound:?})"
        );
    }
}

#[tokio::test]
async fn a_slow_download_does_not_stall_logins_to_the_same_device() {
    let _count = BUFFERED_COUNT.lock().await;
    let big = big_download(200 * 1024 * 1024).await;
    let w = World::start(&[format!("9000=127.0.0.1:{big}")]).await;
    let cfg = w.config("");
    let bound = login_bound(&w, &cfg).await;
    // One stream from dev1, read at about 20 KB/s.
    let key = w.relay.add_key("tau", Role::Controller, "bob");
    let conn = w.relay.controller("tau", key).await;
    let ch = conn.open("dev1", 9000).await.unwrap();
    let (mut near, far) = tokio::io::duplex(16 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut got = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            match near.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
        }
    });
    // Let the windows along the way fill up.
    tokio::time::timeout(WAIT, warren::ssh::buffered_at_least(1024 * 1024))
        .await
        .expect("the slow stream fills its window");
    ten_logins_each_under(&w, &cfg, bound).await;
    // What waits in memory for the slow reader: the relay's window towards
    // the device, the agent's and this controller's, plus a small constant;
    // never the 200 MiB the device would send.
    let buffered = warren::ssh::buffered_bytes();
    assert!(
        buffered <= 3 * 2 * 1024 * 1024 + 256 * 1024,
        "{buffered} bytes buffered"
    );
    splice.abort();
    reader.abort();
}

#[tokio::test]
async fn a_slow_upload_among_many_socks_streams_stalls_only_itself() {
    let _count = BUFFERED_COUNT.lock().await;
    let sink = slow_sink(20_000).await;
    let web = http_server("hello from dev1").await;
    let w = World::start(&[
        format!("9001=127.0.0.1:{sink}"),
        format!("8080=127.0.0.1:{web}"),
    ])
    .await;
    let cfg = w.config("");
    let socks = closed_port().await;
    let get = || {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "20", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg("http://dev1:8080/");
        c
    };
    let mut fwd = spawn(
        Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args(["-N", "-v", "-D"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg("-p")
            .arg(w.relay.addr.port().to_string())
            .arg("tau@127.0.0.1"),
    );
    let stderr = fwd.stderr.take().unwrap();
    common::openssh::wait_for_line(stderr, "Local forwarding listening on 127.0.0.1", "ssh -D")
        .await;
    // As for logins: 1 s, or twice the slowest request with no other
    // traffic on a machine too loaded for that.
    let mut alone = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let r = run(&mut get(), LIMIT).await;
        assert!(r.ok, "request without other traffic: {}", r.stderr);
        alone = alone.max(started.elapsed());
    }
    let bound = Duration::from_secs(1).max(alone * 2);
    // The slow upload: 20 MB pushed to a port that reads 20 KB/s.
    let blob = w.dir.path().join("upload");
    std::fs::write(&blob, vec![b'u'; 20 * 1024 * 1024]).unwrap();
    let mut upload = spawn(
        Command::new("curl")
            .args(["-sS", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg("-T")
            .arg(&blob)
            .arg("http://dev1:9001/"),
    );
    tokio::time::timeout(WAIT, warren::ssh::buffered_at_least(1024 * 1024))
        .await
        .expect("the upload fills its window");
    for i in 0..10 {
        let started = Instant::now();
        let r = run(&mut get(), LIMIT).await;
        let took = started.elapsed();
        assert!(r.ok, "request {i}: {}", r.stderr);
        assert_eq!(r.stdout_str(), "hello from dev1");
        assert!(
            took < bound,
            "request {i} took {took:?} beside a slow upload (bound {bound:?})"
        );
    }
    let buffered = warren::ssh::buffered_bytes();
    assert!(
        buffered <= 3 * 2 * 1024 * 1024 + 256 * 1024,
        "{buffered} bytes buffered"
    );
    let _ = upload.kill().await;
}
