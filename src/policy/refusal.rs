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
    /// An on-demand device was woken and reported why it cannot come.
    WakeFailed {
        device: Name,
        reason: String,
    },
    /// An on-demand device was woken and did not register in time.
    WakeTimeout {
        device: Name,
        waited: std::time::Duration,
    },
    /// An on-demand device is asleep and this relay has no broker.
    CannotWake {
        device: Name,
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
    // One arm per variant, each today's sentence: long because the enum is.
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
            Refusal::WakeFailed { device, reason } => {
                write!(f, "device {device} was asleep and could not wake: {reason}")
            }
            Refusal::WakeTimeout { device, waited } => write!(
                f,
                "device {device} was asleep and did not come online within {waited:?} of the wake request"
            ),
            Refusal::CannotWake { device } => write!(
                f,
                "device {device} is asleep (on demand) and this relay has no MQTT broker to wake it (warren relay --mqtt URL)"
            ),
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
            Refusal::WakeFailed { .. } => "wake_failed",
            Refusal::WakeTimeout { .. } => "wake_timeout",
            Refusal::CannotWake { .. } => "cannot_wake",
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
mod tests;
