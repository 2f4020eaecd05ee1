//! Interop with stock OpenSSH at both ends: the real `ssh` client as the
//! controller (and as an agentless device), a real `sshd` as the device's
//! target.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::openssh::{self, Ran, Sshd, curl, login_user, run, spawn, stock_ssh, wait_for_line};
use common::*;
use tokio::process::Command;
use warren::protocol::Role;

/// A relay, a device `dev1` (agent) whose port 22 is a real sshd and whose
/// port 8080 is a web service, and ssh config files for stock ssh.
struct World {
    relay: TestRelay,
    sshd: Sshd,
    _agent: TestAgent,
    dir: tempfile::TempDir,
    /// ssh config for the controller (key alice in system tau).
    config: PathBuf,
    user: String,
}

const LIMIT: Duration = Duration::from_secs(60);

impl World {
    async fn start() -> World {
        let relay = TestRelay::start().await;
        relay.add_system("tau");
        let sshd = Sshd::start().await;
        let web = http_server("hello from dev1").await;
        let dir = tempfile::tempdir().unwrap();
        let alice = relay.add_key_file(dir.path(), "tau", Role::Controller, "alice");
        let dev = relay.add_key("tau", Role::Device, "dev1");
        let mut agent = TestAgent::start(relay.agent_settings(
            "tau",
            "dev1",
            dev,
            &[
                format!("22=127.0.0.1:{}", sshd.port),
                format!("8080=127.0.0.1:{web}"),
            ],
        ));
        agent.online().await;
        let user = login_user();
        let known = write_file(
            dir.path(),
            "known_hosts",
            &format!(
                "{}\ndev1,dev2,dev3 {}\n",
                relay.known_hosts_line(),
                sshd.host_pub
            ),
        );
        // `ssh -J` does not pass -i to the jump host: keys come from the config.
        let config = write_file(
            dir.path(),
            "ssh_config",
            &format!(
                "Host 127.0.0.1\n  IdentityFile {alice}\n\
                 Host dev1 dev2 dev3 nosuch\n  User {user}\n  IdentityFile {userkey}\n\
                 Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
                 UserKnownHostsFile {known}\n  ConnectTimeout 20\n",
                alice = alice.display(),
                userkey = sshd.user_key.display(),
                known = known.display(),
            ),
        );
        World {
            relay,
            sshd,
            _agent: agent,
            dir,
            config,
            user,
        }
    }

    fn jump(&self) -> String {
        format!("tau@127.0.0.1:{}", self.relay.addr.port())
    }

    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&self.config);
        c
    }

    /// `ssh -J tau@relay:PORT user@HOST CMD`
    async fn via_jump(&self, host: &str, cmd: &str) -> Ran {
        run(
            self.ssh()
                .arg("-J")
                .arg(self.jump())
                .arg(format!("{}@{host}", self.user))
                .arg(cmd),
            LIMIT,
        )
        .await
    }

    /// Starts `ssh -N -v ARGS -p PORT tau@127.0.0.1` and waits until its
    /// local listener is up.
    async fn forwarder(&self, args: &[String]) -> tokio::process::Child {
        let mut child = spawn(
            self.ssh()
                .args(["-N", "-v"])
                .args(args)
                .arg("-p")
                .arg(self.relay.addr.port().to_string())
                .arg("tau@127.0.0.1"),
        );
        let stderr = child.stderr.take().unwrap();
        wait_for_line(stderr, "Local forwarding listening on 127.0.0.1", "ssh -N").await;
        child
    }
}

#[tokio::test]
async fn ssh_jump_reaches_the_device_sshd() {
    let w = World::start().await;
    let r = w.via_jump("dev1", "echo reached $(hostname)").await;
    assert!(r.ok, "ssh -J failed: {}", r.stderr);
    assert!(r.stdout_str().starts_with("reached "), "{}", r.stdout_str());
}

#[tokio::test]
async fn ssh_proxycommand_with_w_reaches_the_device_sshd() {
    let w = World::start().await;
    let proxy = format!(
        "ssh -F {} -p {} -W %h:%p tau@127.0.0.1",
        w.config.display(),
        w.relay.addr.port()
    );
    let r = run(
        w.ssh()
            .arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .arg(format!("{}@dev1", w.user))
            .arg("echo via-W"),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "via-W");
}

#[tokio::test]
async fn ssh_dynamic_forward_resolves_device_names() {
    let w = World::start().await;
    let port = closed_port().await;
    let _fwd = w
        .forwarder(&["-D".into(), format!("127.0.0.1:{port}")])
        .await;
    let proxy = format!("127.0.0.1:{port}");
    let r = curl(&["--socks5-hostname", &proxy, "http://dev1:8080/"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str(), "hello from dev1");
    // An unknown name is refused, not hung.
    let r = curl(&["--socks5-hostname", &proxy, "http://nosuch:8080/"]).await;
    assert!(!r.ok);
}

#[tokio::test]
async fn ssh_local_forward_reaches_a_device_port() {
    let w = World::start().await;
    let port = closed_port().await;
    let _fwd = w
        .forwarder(&["-L".into(), format!("127.0.0.1:{port}:dev1:8080")])
        .await;
    let r = curl(&[&format!("http://127.0.0.1:{port}/")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str(), "hello from dev1");
}

#[tokio::test]
async fn ssh_ls_at_the_relay_lists_the_system() {
    let w = World::start().await;
    let port = w.relay.addr.port().to_string();
    let r = run(w.ssh().args(["-p", &port, "tau@127.0.0.1", "ls"]), LIMIT).await;
    assert!(r.ok, "{}", r.stderr);
    let out = r.stdout_str();
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("dev1") && l.contains("online") && l.contains("127.0.0.1:")),
        "{out}"
    );
    let r = run(
        w.ssh().args(["-p", &port, "tau@127.0.0.1", "ls", "--json"]),
        LIMIT,
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v[0]["name"], "dev1");
    assert_eq!(v[0]["online"], true);
}

#[tokio::test]
async fn refusals_reach_the_ssh_user() {
    let w = World::start().await;
    let r = w.via_jump("nosuch", "true").await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no device named nosuch in system tau"),
        "{}",
        r.stderr
    );
    let port = w.relay.addr.port().to_string();
    let r = run(
        w.ssh().args(["-p", &port, "-W", "dev1:2", "tau@127.0.0.1"]),
        LIMIT,
    )
    .await;
    assert!(r.stderr.contains("does not serve port 2"), "{}", r.stderr);
}

#[tokio::test]
async fn passwords_are_never_offered() {
    let w = World::start().await;
    let port = w.relay.addr.port().to_string();
    let r = run(
        w.ssh().args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
            "-p",
            &port,
            "tau@127.0.0.1",
            "ls",
        ]),
        LIMIT,
    )
    .await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("Permission denied (publickey)"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn a_64_mib_file_arrives_intact_through_ssh_jump() {
    let w = World::start().await;
    let file = w.dir.path().join("blob");
    let data = pseudo_random(64 * 1024 * 1024);
    std::fs::write(&file, &data).unwrap();
    let want = sha256(&data);
    let started = std::time::Instant::now();
    let r = w.via_jump("dev1", &format!("cat {}", file.display())).await;
    let took = started.elapsed();
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.len(), data.len());
    assert_eq!(sha256(&r.stdout), want, "bytes changed on the way");
    eprintln!("64 MiB through ssh -J in {took:?}");
}

/// Starts stock `ssh -N -R NAME:22:127.0.0.1:SSHD` as an agentless device
/// with its own device key.
fn device_config(w: &World, name: &str) -> PathBuf {
    let key = w
        .relay
        .add_key_file(w.dir.path(), "tau", Role::Device, name);
    write_file(
        w.dir.path(),
        &format!("{name}_config"),
        &format!(
            "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {}\n  ExitOnForwardFailure yes\n  ServerAliveInterval 5\n",
            key.display(),
            w.dir.path().join("known_hosts").display()
        ),
    )
}

#[tokio::test]
async fn a_device_without_agent_registers_with_ssh_r() {
    let w = World::start().await;
    let cfg = device_config(&w, "dev2");
    let _device = spawn(
        Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .arg("-N")
            .arg("-R")
            .arg(format!("dev2:22:localhost:{}", w.sshd.port))
            .arg("-p")
            .arg(w.relay.addr.port().to_string())
            .arg("tau@127.0.0.1"),
    );
    w.relay.wait_online("tau", "dev2", true).await;
    let r = w.via_jump("dev2", "echo agentless").await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "agentless");
}

#[tokio::test]
async fn autossh_keeps_an_agentless_device_registered() {
    let w = World::start().await;
    let cfg = device_config(&w, "dev3");
    let _device = spawn(
        Command::new("autossh")
            .env("AUTOSSH_GATETIME", "0")
            .args(["-M", "0", "-F"])
            .arg(&cfg)
            .arg("-N")
            .arg("-R")
            .arg(format!("dev3:22:localhost:{}", w.sshd.port))
            .arg("-p")
            .arg(w.relay.addr.port().to_string())
            .arg("tau@127.0.0.1"),
    );
    w.relay.wait_online("tau", "dev3", true).await;
    let r = w.via_jump("dev3", "echo under-autossh").await;
    assert!(r.ok, "{}", r.stderr);
    // The relay drops the connection (the key reconnects, takes over…):
    // autossh starts ssh again and the name comes back.
    let live = w.relay.relay.registry().conns();
    let dev3 = live.iter().find(|c| c.name.as_str() == "dev3").unwrap();
    dev3.handle.disconnect("test: dropping dev3").await;
    w.relay.wait_online("tau", "dev3", false).await;
    w.relay.wait_online("tau", "dev3", true).await;
    let r = w.via_jump("dev3", "echo back").await;
    assert!(r.ok, "{}", r.stderr);
}

#[tokio::test]
async fn warren_proxy_and_warren_ssh_reach_the_device() {
    let w = World::start().await;
    let alice = w.dir.path().join("tau-alice");
    let client_cfg = write_file(
        w.dir.path(),
        "client.toml",
        &format!(
            "relay = \"127.0.0.1:{}\"\nsystem = \"tau\"\nkey = \"{}\"\nrelay_host_key = \"{}\"\n",
            w.relay.addr.port(),
            alice.display(),
            w.relay.host_key()
        ),
    );
    let exe = env!("CARGO_BIN_EXE_warren");
    // warren proxy as ProxyCommand, settings from the client config file.
    let r = run(
        w.ssh()
            .arg("-o")
            .arg(format!(
                "ProxyCommand={exe} proxy --client-config {} %h %p",
                client_cfg.display()
            ))
            .arg(format!("{}@dev1", w.user))
            .arg("echo via-warren-proxy"),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "via-warren-proxy");

    // warren ssh: settings from WARREN_* variables; extra ssh args after --.
    let known = w.dir.path().join("known_hosts_alias");
    std::fs::write(&known, format!("dev1.tau.warren {}\n", w.sshd.host_pub)).unwrap();
    let r = run(
        Command::new(exe)
            .env("WARREN_RELAY", format!("127.0.0.1:{}", w.relay.addr.port()))
            .env("WARREN_SYSTEM", "tau")
            .env("WARREN_KEY", &alice)
            .env("WARREN_RELAY_HOST_KEY", w.relay.host_key())
            .env("XDG_CONFIG_HOME", w.dir.path().join("empty-xdg"))
            .args(["ssh", &format!("{}@dev1", w.user), "--"])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(&w.sshd.user_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg("echo via-warren-ssh"),
        LIMIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "via-warren-ssh");

    // A wrong pin is refused with a message naming both keys.
    let r = run(
        Command::new(exe)
            .args(["proxy", "--client-config"])
            .arg(&client_cfg)
            .args([
                "--relay-host-key",
                &format!("SHA256:{}", "B".repeat(43)),
                "dev1",
                "22",
            ]),
        LIMIT,
    )
    .await;
    assert!(!r.ok);
    assert!(r.stderr.contains("host key mismatch"), "{}", r.stderr);
}

#[test]
fn login_user_is_known() {
    assert!(!openssh::login_user().is_empty());
}

#[tokio::test]
async fn existing_rsa_and_ecdsa_controller_keys_work() {
    let w = World::start().await;
    let port = w.relay.addr.port().to_string();
    for (kind, bits) in [("rsa", "3072"), ("ecdsa", "256"), ("ecdsa", "521")] {
        let path = w.dir.path().join(format!("ctl-{kind}-{bits}"));
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", kind, "-b", bits, "-f"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let public = warren::ssh::keys::read_public(&path.with_extension("pub")).unwrap();
        w.relay
            .store()
            .add_key(
                &name("tau"),
                Role::Controller,
                &name(&format!("{kind}{bits}")),
                &public,
            )
            .unwrap();
        // Only this key: no config file that names alice's.
        let known = w.dir.path().join("known_hosts");
        let r = run(
            stock_ssh(&known, &path).args(["-p", &port, "tau@127.0.0.1", "ls"]),
            LIMIT,
        )
        .await;
        assert!(r.ok, "{kind}-{bits}: {}", r.stderr);
        assert!(r.stdout_str().contains("dev1"));
    }
}
