//! NAT test in network namespaces: the relay alone has a reachable address;
//! a device and a controller each sit behind their own MASQUERADE NAT and
//! cannot reach each other. The controller reaches the device's sshd by name
//! through the relay; then the device's link is cut and restored, and the
//! relay is killed and restarted, and each time the agent is back within 60 s.
//!
//! Topology (addresses exist only inside this test's namespaces):
//!
//! ```text
//!  dev 192.168.50.2 ── natD (MASQUERADE) 203.0.113.2 ──┐
//!                                                     relay 203.0.113.1 / .5
//!  ctl 192.168.60.2 ── natC (MASQUERADE) 203.0.113.6 ──┘
//! ```
//!
//! Needs root (namespaces, iptables). It fails, never skips, without it.

mod common;

use std::time::{Duration, Instant};

use common::cli::{admin_tau, p, warren_ok};
use common::netns::{
    Net, Watched, agent_config, default_route, in_ns, ip, is_root, reachable, start_relay,
};
use common::openssh::{Sshd, login_user, run};
use common::*;

const BACK_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn device_and_controller_behind_nat_meet_at_the_relay() {
    assert!(
        is_root(),
        "the NAT test needs root (network namespaces, iptables); run the suite as root (CI does)"
    );
    let mut net = Net::new("w");
    let relay_ns = net.add_ns("relay");
    let nat_d = net.add_ns("natd");
    let nat_c = net.add_ns("natc");
    let dev_ns = net.add_ns("dev");
    let ctl_ns = net.add_ns("ctl");
    let (relay_d, nat_d_wan) =
        net.link(&relay_ns, "203.0.113.1/30", &nat_d, "203.0.113.2/30", "rd");
    let (_, nat_c_wan) = net.link(&relay_ns, "203.0.113.5/30", &nat_c, "203.0.113.6/30", "rc");
    net.link(&nat_d, "192.168.50.1/24", &dev_ns, "192.168.50.2/24", "dl");
    net.link(&nat_c, "192.168.60.1/24", &ctl_ns, "192.168.60.2/24", "cl");
    for (nat, wan, gw) in [
        (&nat_d, &nat_d_wan, "203.0.113.1"),
        (&nat_c, &nat_c_wan, "203.0.113.5"),
    ] {
        net.nat(nat, wan);
        default_route(nat, gw);
    }
    default_route(&dev_ns, "192.168.50.1");
    default_route(&ctl_ns, "192.168.60.1");

    // The device's sshd, inside its namespace.
    let sshd = Sshd::start_in(Some(&dev_ns)).await;
    let dev_sshd = format!("192.168.50.2:{}", sshd.port);

    // Only the relay is reachable; the two private sides cannot see each other.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("relay-data");
    let (mut relay, rport) = start_relay(&relay_ns, &data, 0).await;
    assert!(
        reachable(&dev_ns, &format!("203.0.113.1:{rport}")).await,
        "device reaches the relay"
    );
    assert!(
        reachable(&ctl_ns, &format!("203.0.113.5:{rport}")).await,
        "controller reaches the relay"
    );
    assert!(
        !reachable(&ctl_ns, &dev_sshd).await,
        "controller must not reach the device directly"
    );
    assert!(
        !reachable(&relay_ns, &dev_sshd).await,
        "the relay has no route into the device's network"
    );

    // Keys and config, through the admin CLI.
    let host_key = admin_tau(&data, d, &[("device", "dev1"), ("controller", "alice")]).await;
    let agent_cfg = agent_config(
        d,
        "dev1",
        &format!("203.0.113.1:{rport}"),
        &host_key,
        &format!(
            "allow = [\"22=127.0.0.1:{}\"]\nkeepalive_timeout = \"3s\"\n",
            sshd.port
        ),
    );
    let mut agent = Watched::agent(&dev_ns, &agent_cfg);
    agent.line("online: registered", WAIT).await;

    let relay_pub = std::fs::read_to_string(data.join("host_key.pub")).unwrap();
    let known = write_file(
        d,
        "known_hosts",
        &format!(
            "[203.0.113.5]:{rport} {}\ndev1 {}\n",
            relay_pub.trim(),
            sshd.host_pub
        ),
    );
    let config = write_file(
        d,
        "ssh_config",
        &format!(
            "Host 203.0.113.5\n  IdentityFile {}\nHost dev1\n  User {}\n  IdentityFile {}\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  ConnectTimeout 10\n",
            d.join("alice").display(),
            login_user(),
            sshd.user_key.display(),
            known.display()
        ),
    );
    let reach = || async {
        run(
            in_ns(&ctl_ns, "ssh").arg("-F").arg(&config).args([
                "-J",
                &format!("tau@203.0.113.5:{rport}"),
                "dev1",
                "echo reached",
            ]),
            WAIT,
        )
        .await
    };
    let r = reach().await;
    assert!(
        r.ok,
        "controller behind NAT reaches dev1 behind NAT: {}",
        r.stderr
    );
    assert_eq!(r.stdout_str().trim(), "reached");
    // The relay saw the device from its NAT's public address.
    let ls = warren_ok(&["admin", "--data", p(&data), "ls", "--json"]).await;
    assert!(ls.contains("203.0.113.2:"), "{ls}");

    // Cut the device's link long enough for the agent to notice, restore it.
    ip(&["-n", &relay_ns, "link", "set", &relay_d, "down"]);
    agent.line("offline:", Duration::from_secs(20)).await;
    ip(&["-n", &relay_ns, "link", "set", &relay_d, "up"]);
    let restored = Instant::now();
    agent.line("online: registered", BACK_WITHIN).await;
    let r = reach().await;
    assert!(r.ok, "reach after link restore: {}", r.stderr);
    let link_back = restored.elapsed();
    assert!(link_back < BACK_WITHIN, "back after {link_back:?}");

    // Kill the relay hard and start it again on the same data.
    relay.kill();
    agent.line("offline:", Duration::from_secs(20)).await;
    let (_relay, _) = start_relay(&relay_ns, &data, rport).await;
    let restarted = Instant::now();
    agent.line("online: registered", BACK_WITHIN).await;
    let r = reach().await;
    assert!(r.ok, "reach after relay restart: {}", r.stderr);
    let relay_back = restarted.elapsed();
    assert!(relay_back < BACK_WITHIN, "back after {relay_back:?}");
    eprintln!("agent back {link_back:?} after link restore, {relay_back:?} after relay restart");
}
