//! Every refusal's text, pinned word for word: tests, the SOCKS client and
//! OpenSSH users read these sentences.

use super::*;

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn net(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every variant with the exact text it prints today. A table, one entry
/// per case, hence its length.
fn streams() -> Vec<(Refusal, &'static str)> {
    let via_dev = Via::Device {
        host: "dev1".into(),
    };
    let via_gw = Via::Gateway {
        gateway: n("gw1"),
        address: "10.0.0.5".into(),
    };
    vec![
        (
            Refusal::NoDevice {
                name: n("nope"),
                system: n("tau"),
                host: "nope".into(),
                gateways: vec![],
            },
            "no device named nope in system tau",
        ),
        (
            Refusal::NoDevice {
                name: n("db.lan"),
                system: n("tau"),
                host: "db.lan".into(),
                gateways: vec![n("gw1")],
            },
            "no device named db.lan in system tau",
        ),
        (
            Refusal::NoDevice {
                name: n("db.lan"),
                system: n("tau"),
                host: "db.lan".into(),
                gateways: vec![n("gw1"), n("gw2")],
            },
            "no device named db.lan in system tau; for a host behind a gateway, name the gateway: db.lan.via.gw1 (gateways: gw1, gw2)",
        ),
        (
            Refusal::NotAName {
                host: "Bad Name".into(),
                system: n("tau"),
                err: Name::parse("Bad Name").unwrap_err(),
            },
            "no device named \"Bad Name\" in system tau (name \"Bad Name\" has a character other than a-z, 0-9, '-', '_', '.' (or does not start with a letter or digit))",
        ),
        (
            Refusal::PortNotServed {
                device: n("dev1"),
                port: 80,
                serves: vec![22, 8080],
            },
            "device dev1 does not serve port 80 (it serves 22, 8080)",
        ),
        (
            Refusal::Offline {
                device: n("dev9"),
                last_seen: None,
            },
            "device dev9 is offline (last seen never)",
        ),
        (
            Refusal::Disabled { device: n("dev1") },
            "device dev1 is disabled by an admin",
        ),
        (
            Refusal::BadGatewayName {
                given: "".into(),
                err: Name::parse("").unwrap_err(),
            },
            "\"\" after \".via.\" is no gateway name: a name cannot be empty",
        ),
        (
            Refusal::NotAGateway {
                gateway: n("dev1"),
                system: n("tau"),
            },
            "gateway dev1 of system tau is online but is not a gateway (its agent has no scope)",
        ),
        (
            Refusal::GatewayOffline {
                gateway: n("gw9"),
                system: n("tau"),
            },
            "gateway gw9 of system tau is not online",
        ),
        (
            Refusal::GatewayGone { gateway: n("gw1") },
            "gateway gw1 went offline",
        ),
        (
            Refusal::GatewayPort {
                gateway: n("gw1"),
                ports: vec![22],
                port: 80,
            },
            "gateway gw1 serves port 22 on its networks, not 80",
        ),
        (
            Refusal::GatewayPort {
                gateway: n("gw1"),
                ports: vec![22, 443],
                port: 0,
            },
            "gateway gw1 serves ports 22, 443 on its networks, not 0",
        ),
        (
            Refusal::NoGatewayOnline {
                system: n("tau"),
                ip: ip("10.0.0.5"),
            },
            "no gateway of system tau is online to reach 10.0.0.5",
        ),
        (
            Refusal::OutsidePermit {
                ip: ip("10.9.0.5"),
                network: net("10.9.0.0/16"),
                gateway: n("gw1"),
            },
            "10.9.0.5 is in network 10.9.0.0/16, associated with gateway gw1 but outside its permit",
        ),
        (
            Refusal::OutsideScope {
                ip: ip("192.168.1.1"),
                gateway: n("gw1"),
                served: vec![net("10.0.0.0/8"), net("172.16.0.0/12")],
            },
            "192.168.1.1 is outside the scope of gateway gw1 (10.0.0.0/8, 172.16.0.0/12)",
        ),
        (
            Refusal::OutsideScope {
                ip: ip("192.168.1.1"),
                gateway: n("gw1"),
                served: vec![],
            },
            "192.168.1.1 is outside the scope of gateway gw1 (nothing)",
        ),
        (
            Refusal::OutsideEveryScope {
                ip: ip("192.168.1.1"),
                system: n("tau"),
                served: vec![
                    (n("gw1"), vec![net("10.0.0.0/8")]),
                    (n("gw2"), vec![net("10.1.0.0/16"), net("10.2.0.0/16")]),
                ],
            },
            "192.168.1.1 is outside the scope of every gateway of system tau (gw1: 10.0.0.0/8; gw2: 10.1.0.0/16, 10.2.0.0/16)",
        ),
        (
            Refusal::Ambiguous {
                ip: ip("10.0.0.5"),
                candidates: vec![
                    (n("gw1"), net("10.0.0.0/24")),
                    (n("gw2"), net("10.0.0.0/24")),
                ],
            },
            "10.0.0.5 is ambiguous: it is in the scope of gateways gw1 (10.0.0.0/24) and gw2 (10.0.0.0/24); name one, e.g. 10.0.0.5.via.gw1",
        ),
        (Refusal::NotAPort { port: 70000 }, "70000 is not a port"),
        (
            Refusal::NoGatewayRule {
                device: n("gw1"),
                target: "db:5432".into(),
            },
            "device keys cannot open streams, except to targets a gateway rule allows; none allows gw1 to reach db:5432 (an admin adds one with `warren admin gateway allow gw1 db:5432`)",
        ),
        (
            Refusal::RoleCannotOpen { role: Role::Device },
            "device keys cannot open streams; use a controller key",
        ),
        (
            Refusal::OpenFailed {
                via: via_dev.clone(),
                port: 22,
                err: "Connection refused".into(),
            },
            "device dev1 could not open port 22: Connection refused",
        ),
        (
            Refusal::OpenFailed {
                via: via_gw.clone(),
                port: 22,
                err: "no route".into(),
            },
            "gateway gw1 for 10.0.0.5 could not open port 22: no route",
        ),
        (
            Refusal::OpenTimeout { via: via_dev },
            "device dev1 did not answer within 15s",
        ),
        (
            Refusal::OpenTimeout { via: via_gw },
            "gateway gw1 for 10.0.0.5 did not answer within 15s",
        ),
        (
            Refusal::WakeFailed {
                device: n("dev1"),
                reason: "relay unreachable".into(),
            },
            "device dev1 was asleep and could not wake: relay unreachable",
        ),
        (
            Refusal::WakeTimeout {
                device: n("dev1"),
                waited: std::time::Duration::from_secs(30),
            },
            "device dev1 was asleep and did not come online within 30s of the wake request",
        ),
        (
            Refusal::CannotWake { device: n("dev1") },
            "device dev1 is asleep (on demand) and this relay has no MQTT broker to wake it (warren relay --mqtt URL)",
        ),
    ]
}

#[test]
fn stream_refusals_read_as_today() {
    for (r, text) in streams() {
        assert_eq!(r.to_string(), text, "{}", r.code());
        assert_eq!(r.to_wire().message, text);
    }
}

#[test]
fn every_refusal_text_classifies_as_its_variant_says() {
    use crate::policy::{SocksClass, classify};
    let mut classes = Vec::new();
    for (r, text) in streams() {
        assert_eq!(classify(text), r.socks_class(), "{}: {text}", r.code());
        classes.push(r.socks_class());
    }
    for want in [
        SocksClass::HostUnreachable,
        SocksClass::NotAllowed,
        SocksClass::TtlExpired,
        SocksClass::ConnectionRefused,
    ] {
        assert!(classes.contains(&Some(want)), "no variant is {want:?}");
    }
    // The gateway agent's refusal, which is no relay text.
    assert_eq!(
        classify("10.0.0.9:22 is not in the allowlist"),
        Some(SocksClass::NotAllowed)
    );
    assert_eq!(classify("something else"), None);
}

#[test]
fn codes_are_unique_snake_case() {
    let mut codes: Vec<&str> = streams().iter().map(|(r, _)| r.code()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 23, "one code per variant: {codes:?}");
    for c in codes {
        assert!(
            c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
            "{c}"
        );
    }
}

#[test]
fn only_the_targets_own_failures_are_connect_failed() {
    let connect_failed = ssh::Refusal::connect_failed("").kind;
    let prohibited = ssh::Refusal::prohibited("").kind;
    for (r, _) in streams() {
        let connect = matches!(r, Refusal::OpenFailed { .. } | Refusal::OpenTimeout { .. });
        let want = if connect { connect_failed } else { prohibited };
        assert_eq!(r.to_wire().kind, want, "{}", r.code());
    }
}

/// A table like `streams`, for the other enums; long for the same reason.
#[test]
fn other_refusals_read_as_today() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            RegisterRefusal::RoleCannotRegister {
                role: Role::Controller,
            }
            .to_string(),
            "controller keys cannot register device names; add a device key for that",
            "role_cannot_register",
        ),
        (
            RegisterRefusal::BadName(Name::parse("").unwrap_err()).to_string(),
            "a name cannot be empty",
            "bad_name",
        ),
        (
            RegisterRefusal::NotYourName {
                owns: n("dev1"),
                asked: n("dev2"),
            }
            .to_string(),
            "this key owns device name dev1, not dev2",
            "not_your_name",
        ),
        (
            RegisterRefusal::NotADevicePort { port: 0 }.to_string(),
            "port 0 is not a device port (1-65535)",
            "not_a_device_port",
        ),
        (
            RegisterRefusal::TooManyForwards.to_string(),
            "more than 64 forward requests on one connection; closing it",
            "too_many_forwards",
        ),
        (
            CommandRefusal::CannotRunCommands { role: Role::Device }.to_string(),
            "device keys cannot run commands here",
            "cannot_run_commands",
        ),
        (
            CommandRefusal::OtherSystem {
                own: n("tau"),
                asked: "other".into(),
            }
            .to_string(),
            "a controller key sees only its own system (tau), not other",
            "other_system",
        ),
        (
            CommandRefusal::NeedsAdmin {
                role: Role::Controller,
                command: "key ls",
            }
            .to_string(),
            "controller keys may run only ls, log and help; `key ls` needs an admin key",
            "needs_admin",
        ),
        (
            PublicRefusal::NotInAllowFrom.to_string(),
            "peer address is not in allow_from",
            "not_in_allow_from",
        ),
        (
            PublicRefusal::NoValidDevice.to_string(),
            "exposure names no valid device",
            "no_valid_device",
        ),
        (
            PublicRefusal::DeviceNotServing.to_string(),
            "device offline or not serving that port",
            "device_not_serving",
        ),
        (
            PublicRefusal::Disabled.to_string(),
            "device disabled by an admin",
            "disabled",
        ),
        (
            PublicRefusal::OpenFailed {
                err: "refused".into(),
            }
            .to_string(),
            "device could not open the port: refused",
            "open_failed",
        ),
        (
            PublicRefusal::OpenTimeout.to_string(),
            "device did not answer",
            "open_timeout",
        ),
        (
            LoginRefusal::NoKey {
                offered: vec!["SHA256:a".into(), "SHA256:b".into()],
            }
            .to_string(),
            "no registered key among SHA256:a, SHA256:b",
            "no_key",
        ),
        (
            LoginRefusal::RateLimited {
                ip: ip("198.51.100.7"),
                refused: 3,
            }
            .to_string(),
            "rate limited: too many failed logins from 198.51.100.7 (3 connection(s) refused)",
            "rate_limited",
        ),
    ];
    for (got, want, _) in &cases {
        assert_eq!(got, want);
    }
    let codes = [
        RegisterRefusal::TooManyForwards.code(),
        CommandRefusal::CannotRunCommands { role: Role::Device }.code(),
        PublicRefusal::OpenTimeout.code(),
        LoginRefusal::NoKey { offered: vec![] }.code(),
    ];
    let expected: Vec<&str> = cases.iter().map(|(_, _, c)| *c).collect();
    for c in codes {
        assert!(expected.contains(&c), "{c}");
    }
}
