//! An on-demand device behind NAT, in network namespaces: the relay and
//! the MQTT broker sit on the public side; the device reaches both with
//! outbound connections only, and nothing reaches into its network. A
//! stock `ssh -J` wakes it through the broker, and it sleeps again when idle.
//!
//! ```text
//!  dev 192.168.50.2 ── natD (MASQUERADE) 203.0.113.2 ── relay + mosquitto 203.0.113.1
//! ```
//!
//! Needs root (namespaces, iptables). It fails, never skips, without it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cli::{admin_tau, p};
use common::mosquitto::Mosquitto;
use common::netns::{Net, WARREN, Watched, agent_config, default_route, in_ns, is_root, reachable};
use common::openssh::{Sshd, login_user, run};
use common::*;

/// Namespaces: the relay's public side, the NAT, the device behind it.
fn topology(net: &mut Net) -> (String, String) {
    let relay_ns = net.add_ns("relay");
    let nat_d = net.add_ns("natd");
    let dev_ns = net.add_ns("dev");
    let (_, nat_wan) = net.link(&relay_ns, "203.0.113.1/30", &nat_d, "203.0.113.2/30", "rd");
    net.link(&nat_d, "192.168.50.1/24", &dev_ns, "192.168.50.2/24", "dl");
    net.nat(&nat_d, &nat_wan);
    default_route(&nat_d, "203.0.113.1");
    default_route(&dev_ns, "192.168.50.1");
    (relay_ns, dev_ns)
}

/// `warren relay --mqtt …` in `ns`, connected to `broker`; returns it and its port.
async fn relay_with_mqtt(ns: &str, data: &Path, broker: &Mosquitto) -> (Watched, u16) {
    let relay_pass = broker.password_file("relay");
    let mut relay = Watched::start(
        in_ns(ns, WARREN)
            .args(["relay", "--listen", "0.0.0.0:0", "--data", p(data)])
            .args(["--mqtt", &format!("mqtt://127.0.0.1:{}", broker.port)])
            .args([
                "--mqtt-username",
                "relay",
                "--mqtt-password-file",
                p(&relay_pass),
            ]),
    );
    let line = relay.line("relay listening", WAIT).await;
    let rport: u16 = line
        .split("0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    if !relay
        .seen
        .iter()
        .any(|l| l.contains("MQTT broker connected"))
    {
        relay.line("MQTT broker connected", WAIT).await;
    }
    (relay, rport)
}

/// An ssh config for controller alice: `-J tau@127.0.0.1:RPORT dev1`.
fn ssh_config(d: &Path, data: &Path, rport: u16, sshd: &Sshd) -> std::path::PathBuf {
    let relay_pub = std::fs::read_to_string(data.join("host_key.pub")).unwrap();
    let known = write_file(
        d,
        "known_hosts",
        &format!(
            "[127.0.0.1]:{rport} {}\ndev1 {}\n",
            relay_pub.trim(),
            sshd.host_pub
        ),
    );
    write_file(
        d,
        "ssh_config",
        &format!(
            "Host 127.0.0.1\n  IdentityFile {}\nHost dev1\n  User {}\n  IdentityFile {}\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  ConnectTimeout 30\n",
            d.join("alice").display(),
            login_user(),
            sshd.user_key.display(),
            known.display()
        ),
    )
}

#[tokio::test]
async fn a_device_behind_nat_is_woken_through_the_broker_with_outbound_connections_only() {
    assert!(
        is_root(),
        "the NAT test needs root (network namespaces, iptables); run the suite as root (CI does)"
    );
    let mut net = Net::new("m");
    let (relay_ns, dev_ns) = topology(&mut net);
    let sshd = Sshd::start_in(Some(&dev_ns)).await;
    let broker = Mosquitto::start_in(&relay_ns).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("relay-data");
    let (mut relay, rport) = relay_with_mqtt(&relay_ns, &data, &broker).await;
    let host_key = admin_tau(&data, d, &[("device", "dev1"), ("controller", "alice")]).await;

    let dev_sshd = format!("192.168.50.2:{}", sshd.port);
    assert!(
        !reachable(&relay_ns, &dev_sshd).await,
        "the relay side has no route into the device's network"
    );
    assert!(
        reachable(&dev_ns, &format!("203.0.113.1:{}", broker.port)).await,
        "the device reaches the broker (outbound)"
    );
    let dev_pass = broker.password_file("dev1");
    let cfg = agent_config(
        d,
        "dev1",
        &format!("203.0.113.1:{rport}"),
        &host_key,
        &format!(
            "allow = [\"22=127.0.0.1:{}\"]\n[on_demand]\nbroker = \"mqtt://203.0.113.1:{}\"\n\
             username = \"dev1\"\npassword_file = \"{}\"\nidle_timeout = \"2s\"\n",
            sshd.port,
            broker.port,
            dev_pass.display()
        ),
    );
    let mut states = broker.subscribe("admin", "warren/tau/dev1/state").await;
    let mut agent = Watched::agent(&dev_ns, &cfg);
    agent.line("state=asleep", WAIT).await;
    states.until_state("asleep").await;

    let config = ssh_config(d, &data, rport, &sshd);
    let r = run(
        in_ns(&relay_ns, "ssh").arg("-F").arg(&config).args([
            "-J",
            &format!("tau@127.0.0.1:{rport}"),
            "dev1",
            "echo reached",
        ]),
        Duration::from_secs(90),
    )
    .await;
    assert!(r.ok, "ssh -J to the asleep device behind NAT: {}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "reached");
    let seen = states.until_state("online").await;
    let names: Vec<&str> = seen.iter().filter_map(|v| v["state"].as_str()).collect();
    assert!(names.ends_with(&["connecting", "online"]), "{names:?}");
    // The relay saw the device come from its NAT's public address.
    let up = relay.line("event=device_up", WAIT).await;
    assert!(up.contains("203.0.113.2"), "{up}");
    let slept = states.until_state("asleep").await;
    let reason = slept.last().unwrap()["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("idle"), "{reason}");
}
