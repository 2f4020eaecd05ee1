//! Refusals as data: one enum per place the relay says no. Each `Display`
//! is the sentence a person reads today, word for word (tests, the SOCKS
//! client and OpenSSH users see it); each `code()` is a stable snake_case
//! name, unique within its enum, for the audit log and for tests to match.

use std::fmt;
use std::net::IpAddr;

use crate::protocol::cidr::VIA;
use crate::protocol::limits::{MAX_FORWARD_REQUESTS, STREAM_OPEN_TIMEOUT};
use crate::protocol::{Cidr, Name, NameError, Role, gateway};
use crate::ssh;

/// Why a stream (`direct-tcpip`) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such device, online or known; `gateways` (online gateways of the
    /// system) makes the `.via.` hint when there are several.
    NoDevice {
        name: Name,
        system: Name,
        host: String,
        gateways: Vec<Name>,
    },
    NotAName {
        host: String,
        system: Name,
        err: NameError,
    },
    PortNotServed {
        device: Name,
        port: u32,
        serves: Vec<u32>,
    },
    /// Known to the store, not online (`last_seen`: Unix seconds).
    Offline {
        device: Name,
        last_seen: Option<u64>,
    },
    Disabled {
        device: Name,
    },
    BadGatewayName {
        given: String,
        err: NameError,
    },
    NotAGateway {
        gateway: Name,
        system: Name,
    },
    GatewayOffline {
        gateway: Name,
        system: Name,
    },
    GatewayGone {
        gateway: Name,
    },
    GatewayPort {
        gateway: Name,
        ports: Vec<u16>,
        port: u32,
    },
    NoGatewayOnline {
        system: Name,
        ip: IpAddr,
    },
    OutsidePermit {
        ip: IpAddr,
        network: Cidr,
        gateway: Name,
    },
    OutsideScope {
        ip: IpAddr,
        gateway: Name,
        served: Vec<Cidr>,
    },
    OutsideEveryScope {
        ip: IpAddr,
        system: Name,
        served: Vec<(Name, Vec<Cidr>)>,
    },
    /// Several gateways hold `ip` equally specifically (at least one).
    Ambiguous {
        ip: IpAddr,
        candidates: Vec<(Name, Cidr)>,
    },
    NotAPort {
        port: u32,
    },
    NoGatewayRule {
        device: Name,
        target: String,
    },
    RoleCannotOpen {
        role: Role,
    },
    OpenFailed {
        via: Via,
        port: u32,
        err: String,
    },
    OpenTimeout {
        via: Via,
    },
}

/// Whom the relay asked to open a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Device { host: String },
    Gateway { gateway: Name, address: String },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Device { host } => write!(f, "device {host}"),
            Via::Gateway { gateway, address } => write!(f, "gateway {gateway} for {address}"),
        }
    }
}

fn joined<T: ToString>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoDevice {
                name,
                system,
                host,
                gateways,
            } => {
                write!(f, "no device named {name} in system {system}")?;
                match gateways.first() {
                    Some(first) if gateways.len() > 1 => write!(
                        f,
                        "; for a host behind a gateway, name the gateway: {host}{VIA}{first} (gateways: {})",
                        joined(gateways, ", ")
                    ),
                    _ => Ok(()),
                }
            }
            Refusal::NotAName { host, system, err } => {
                write!(f, "no device named {host:?} in system {system} ({err})")
            }
            Refusal::PortNotServed {
                device,
                port,
                serves,
            } => write!(
                f,
                "device {device} does not serve port {port} (it serves {})",
                joined(serves, ", ")
            ),
            Refusal::Offline { device, last_seen } => write!(
                f,
                "device {device} is offline (last seen {})",
                crate::render::when(*last_seen)
            ),
            Refusal::Disabled { device } => write!(f, "device {device} is disabled by an admin"),
            Refusal::BadGatewayName { given, err } => {
                write!(f, "{given:?} after {VIA:?} is no gateway name: {err}")
            }
            Refusal::NotAGateway { gateway, system } => write!(
                f,
                "gateway {gateway} of system {system} is online but is not a gateway (its agent has no scope)"
            ),
            Refusal::GatewayOffline { gateway, system } => {
                write!(f, "gateway {gateway} of system {system} is not online")
            }
            Refusal::GatewayGone { gateway } => write!(f, "gateway {gateway} went offline"),
            Refusal::GatewayPort {
                gateway,
                ports,
                port,
            } => write!(
                f,
                "gateway {gateway} serves port{} {} on its networks, not {port}",
                if ports.len() == 1 { "" } else { "s" },
                joined(ports, ", ")
            ),
            Refusal::NoGatewayOnline { system, ip } => {
                write!(f, "no gateway of system {system} is online to reach {ip}")
            }
            Refusal::OutsidePermit {
                ip,
                network,
                gateway,
            } => write!(
                f,
                "{ip} is in network {network}, associated with gateway {gateway} but outside its permit"
            ),
            Refusal::OutsideScope {
                ip,
                gateway,
                served,
            } => write!(
                f,
                "{ip} is outside the scope of gateway {gateway} ({})",
                gateway::list(served)
            ),
            Refusal::OutsideEveryScope { ip, system, served } => {
                let served: Vec<String> = served
                    .iter()
                    .map(|(n, s)| format!("{n}: {}", gateway::list(s)))
                    .collect();
                write!(
                    f,
                    "{ip} is outside the scope of every gateway of system {system} ({})",
                    served.join("; ")
                )
            }
            Refusal::Ambiguous { ip, candidates } => {
                let names: Vec<String> = candidates
                    .iter()
                    .map(|(n, c)| format!("{n} ({c})"))
                    .collect();
                let first = candidates.first().map(|(n, _)| n.as_str()).unwrap_or("");
                write!(
                    f,
                    "{ip} is ambiguous: it is in the scope of gateways {}; name one, e.g. {ip}{VIA}{first}",
                    names.join(" and ")
                )
            }
            Refusal::NotAPort { port } => write!(f, "{port} is not a port"),
            Refusal::NoGatewayRule { device, target } => write!(
                f,
                "device keys cannot open streams, except to targets a gateway rule allows; none allows {device} to reach {target} (an admin adds one with `warren admin gateway allow {device} {target}`)"
            ),
            Refusal::RoleCannotOpen { role } => {
                write!(f, "{role} keys cannot open streams; use a controller key")
            }
            Refusal::OpenFailed { via, port, err } => {
                write!(f, "{via} could not open port {port}: {err}")
            }
            Refusal::OpenTimeout { via } => {
                write!(f, "{via} did not answer within {STREAM_OPEN_TIMEOUT:?}")
            }
        }
    }
}

impl Refusal {
    /// A stable name for the audit log and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoDevice { .. } => "no_device",
            Refusal::NotAName { .. } => "not_a_name",
            Refusal::PortNotServed { .. } => "port_not_served",
            Refusal::Offline { .. } => "offline",
            Refusal::Disabled { .. } => "disabled",
            Refusal::BadGatewayName { .. } => "bad_gateway_name",
            Refusal::NotAGateway { .. } => "not_a_gateway",
            Refusal::GatewayOffline { .. } => "gateway_offline",
            Refusal::GatewayGone { .. } => "gateway_gone",
            Refusal::GatewayPort { .. } => "gateway_port",
            Refusal::NoGatewayOnline { .. } => "no_gateway_online",
            Refusal::OutsidePermit { .. } => "outside_permit",
            Refusal::OutsideScope { .. } => "outside_scope",
            Refusal::OutsideEveryScope { .. } => "outside_every_scope",
            Refusal::Ambiguous { .. } => "ambiguous",
            Refusal::NotAPort { .. } => "not_a_port",
            Refusal::NoGatewayRule { .. } => "no_gateway_rule",
            Refusal::RoleCannotOpen { .. } => "role_cannot_open",
            Refusal::OpenFailed { .. } => "open_failed",
            Refusal::OpenTimeout { .. } => "open_timeout",
        }
    }

    /// The refusal as the SSH layer sends it: the target's own failures are
    /// "connect failed", everything else "administratively prohibited".
    pub fn to_wire(&self) -> ssh::Refusal {
        match self {
            Refusal::OpenFailed { .. } | Refusal::OpenTimeout { .. } => {
                ssh::Refusal::connect_failed(self.to_string())
            }
            _ => ssh::Refusal::prohibited(self.to_string()),
        }
    }
}

/// Why a `tcpip-forward` (a device registering its name) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRefusal {
    RoleCannotRegister { role: Role },
    BadName(NameError),
    NotYourName { owns: Name, asked: Name },
    NotADevicePort { port: u32 },
    TooManyForwards,
}

impl fmt::Display for RegisterRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterRefusal::RoleCannotRegister { role } => write!(
                f,
                "{role} keys cannot register device names; add a device key for that"
            ),
            RegisterRefusal::BadName(e) => write!(f, "{e}"),
            RegisterRefusal::NotYourName { owns, asked } => {
                write!(f, "this key owns device name {owns}, not {asked}")
            }
            RegisterRefusal::NotADevicePort { port } => {
                write!(f, "port {port} is not a device port (1-65535)")
            }
            RegisterRefusal::TooManyForwards => write!(
                f,
                "more than {MAX_FORWARD_REQUESTS} forward requests on one connection; closing it"
            ),
        }
    }
}

impl RegisterRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            RegisterRefusal::RoleCannotRegister { .. } => "role_cannot_register",
            RegisterRefusal::BadName(_) => "bad_name",
            RegisterRefusal::NotYourName { .. } => "not_your_name",
            RegisterRefusal::NotADevicePort { .. } => "not_a_device_port",
            RegisterRefusal::TooManyForwards => "too_many_forwards",
        }
    }
}

/// Why a remote admin command (`ssh relay COMMAND`) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandRefusal {
    CannotRunCommands { role: Role },
    OtherSystem { own: Name, asked: String },
    NeedsAdmin { role: Role, command: &'static str },
}

impl fmt::Display for CommandRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandRefusal::CannotRunCommands { role } => {
                write!(f, "{role} keys cannot run commands here")
            }
            CommandRefusal::OtherSystem { own, asked } => write!(
                f,
                "a controller key sees only its own system ({own}), not {asked}"
            ),
            CommandRefusal::NeedsAdmin { role, command } => write!(
                f,
                "{role} keys may run only ls, log and help; `{command}` needs an admin key"
            ),
        }
    }
}

impl CommandRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            CommandRefusal::CannotRunCommands { .. } => "cannot_run_commands",
            CommandRefusal::OtherSystem { .. } => "other_system",
            CommandRefusal::NeedsAdmin { .. } => "needs_admin",
        }
    }
}

/// Why a connection to a public port (an exposure) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicRefusal {
    NotInAllowFrom,
    NoValidDevice,
    DeviceNotServing,
    Disabled,
    OpenFailed { err: String },
    OpenTimeout,
}

impl fmt::Display for PublicRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicRefusal::NotInAllowFrom => f.write_str("peer address is not in allow_from"),
            PublicRefusal::NoValidDevice => f.write_str("exposure names no valid device"),
            PublicRefusal::DeviceNotServing => {
                f.write_str("device offline or not serving that port")
            }
            PublicRefusal::Disabled => f.write_str("device disabled by an admin"),
            PublicRefusal::OpenFailed { err } => {
                write!(f, "device could not open the port: {err}")
            }
            PublicRefusal::OpenTimeout => f.write_str("device did not answer"),
        }
    }
}

impl PublicRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            PublicRefusal::NotInAllowFrom => "not_in_allow_from",
            PublicRefusal::NoValidDevice => "no_valid_device",
            PublicRefusal::DeviceNotServing => "device_not_serving",
            PublicRefusal::Disabled => "disabled",
            PublicRefusal::OpenFailed { .. } => "open_failed",
            PublicRefusal::OpenTimeout => "open_timeout",
        }
    }
}

/// Why a login is refused (the audit line; the SSH client sees only that
/// its keys were not accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Every offered key (by fingerprint) is unknown or revoked.
    NoKey {
        offered: Vec<String>,
    },
    RateLimited {
        ip: IpAddr,
        refused: u64,
    },
}

impl fmt::Display for LoginRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginRefusal::NoKey { offered } => {
                write!(f, "no registered key among {}", offered.join(", "))
            }
            LoginRefusal::RateLimited { ip, refused } => write!(
                f,
                "rate limited: too many failed logins from {ip} ({refused} connection(s) refused)"
            ),
        }
    }
}

impl LoginRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            LoginRefusal::NoKey { .. } => "no_key",
            LoginRefusal::RateLimited { .. } => "rate_limited",
        }
    }
}

#[cfg(test)]
mod tests {
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

    /// Every variant with the exact text it prints today.
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
    fn codes_are_unique_snake_case() {
        let mut codes: Vec<&str> = streams().iter().map(|(r, _)| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 20, "one code per variant: {codes:?}");
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
}
