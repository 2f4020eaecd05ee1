//! The TLS port in network namespaces (issue 20): the device sits behind a
//! NAT that drops everything outbound except TCP 443, as on hotel and
//! corporate networks. The relay binary's TLS port (`--tls`, with a
//! certificate from a CA made here; a port of its own, which the relay's
//! namespace forwards 443 to) answers on 203.0.113.1:443; the agent
//! registers over `tls://` and over `wss://`, while the SSH port stays
//! unreachable from the device.
//!
//! ```text
//!  dev 192.168.50.2 ── nat (MASQUERADE, only TCP 443 out) 203.0.113.2 ── relay 203.0.113.1
//! ```
//!
//! Needs root (namespaces, iptables). It fails, never skips, without it.

mod common;

use common::cli::{admin_tau, p};
use common::netns::{
    Net, Watched, agent_config, default_route, in_ns, is_root, reachable, wildcard_port,
};
use common::tls::make_pki;
use common::*;

fn iptables(ns: &str, rule: &[&str]) {
    common::netns::cmd_ok("ip", &[&["netns", "exec", ns, "iptables"], rule].concat());
}

/// The router `ns` forwards out of its LAN `lan` only TCP to port 443
/// (and the answers to what it let out).
fn only_443_out(ns: &str, lan: &str) {
    let tcp443 = ["-p", "tcp", "--dport", "443", "-j", "ACCEPT"];
    let answers = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ];
    for rule in [&tcp443[..], &answers[..], &["-j", "DROP"][..]] {
        iptables(ns, &[&["-A", "FORWARD", "-i", lan][..], rule].concat());
    }
}

#[tokio::test]
async fn a_device_that_may_only_reach_tcp_443_registers_over_tls_and_websocket() {
    assert!(
        is_root(),
        "the TLS NAT test needs root (network namespaces, iptables); run the suite as root (CI does)"
    );
    let mut net = Net::new("t");
    let relay_ns = net.add_ns("relay");
    let nat = net.add_ns("nat");
    let dev_ns = net.add_ns("dev");
    let (_, nat_wan) = net.link(&relay_ns, "203.0.113.1/30", &nat, "203.0.113.2/30", "rn");
    let (nat_lan, _) = net.link(&nat, "192.168.50.1/24", &dev_ns, "192.168.50.2/24", "nl");
    net.nat(&nat, &nat_wan);
    default_route(&nat, "203.0.113.1");
    default_route(&dev_ns, "192.168.50.1");
    only_443_out(&nat, &nat_lan);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = make_pki(d, &["203.0.113.1", "relay.test"]);
    let data = d.join("relay-data");
    let mut relay = Watched::start(
        in_ns(&relay_ns, env!("CARGO_BIN_EXE_warren"))
            .args(["relay", "--listen", "0.0.0.0:0", "--tls", "0.0.0.0:0"])
            .args([
                "--cert",
                p(&pki.cert),
                "--key",
                p(&pki.key),
                "--data",
                p(&data),
            ]),
    );
    let (mut ssh_port, mut tls_port) = (None, None);
    while ssh_port.is_none() || tls_port.is_none() {
        let line = relay.line("listening", WAIT).await;
        if line.contains("TLS port listening") {
            tls_port = Some(wildcard_port(&line));
        } else if line.contains("relay listening") {
            ssh_port = Some(wildcard_port(&line));
        }
    }
    let (ssh_port, tls_port) = (ssh_port.unwrap(), tls_port.unwrap());
    // What the device dials is 443, as on a real relay.
    iptables(
        &relay_ns,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("203.0.113.1:{tls_port}"),
        ],
    );
    let ssh_addr = format!("203.0.113.1:{ssh_port}");
    assert!(
        !reachable(&dev_ns, &ssh_addr).await,
        "the SSH port must be blocked for the device"
    );
    assert!(reachable(&dev_ns, "203.0.113.1:443").await, "443 is open");

    let host_key = admin_tau(&data, d, &[("device", "dev1"), ("device", "dev2")]).await;
    let ca = format!(
        "relay_ca = \"{}\"\nkeepalive_timeout = \"3s\"\n",
        pki.ca.display()
    );
    let plain = agent_config(d, "dev1", &ssh_addr, &host_key, &ca);
    let mut blocked = Watched::agent(&dev_ns, &plain);
    // The plain agent cannot get out: its error names the TCP layer.
    blocked
        .line(
            &format!("TCP: connecting to {ssh_addr} timed out"),
            WAIT * 2,
        )
        .await;
    blocked.kill();
    for (dev, url) in [
        ("dev1", "tls://203.0.113.1:443"),
        ("dev2", "wss://203.0.113.1/ssh"),
    ] {
        let cfg = agent_config(d, dev, url, &host_key, &ca);
        let mut agent = Watched::agent(&dev_ns, &cfg);
        // Said once the relay took its tcpip-forward: registered.
        agent
            .line(&format!("online: registered as tau/{dev}"), WAIT)
            .await;
    }
}
