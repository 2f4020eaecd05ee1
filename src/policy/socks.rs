//! How a SOCKS client answers a refused stream. The client sees only the
//! relay's text, so the phrases that classify it live here, next to the
//! texts in [`super::refusal`]; a test checks that every refusal's text
//! classifies as its variant says.

use super::Refusal;

/// The SOCKS5 reply a refusal maps to; a refusal with no class is a
/// general failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksClass {
    HostUnreachable,
    NotAllowed,
    TtlExpired,
    ConnectionRefused,
}

/// Phrases of the relay's (and the gateway agent's) refusal texts, by
/// class, checked in this order.
const PHRASES: &[(SocksClass, &[&str])] = &[
    (
        SocksClass::HostUnreachable,
        &[
            "no device named",
            "is offline",
            "no gateway of system",
            "outside the scope of every gateway",
            "is ambiguous",
            "went offline",
            "is no gateway name",
            "could not wake",
            "no MQTT broker to wake it",
        ],
    ),
    (
        SocksClass::NotAllowed,
        &[
            "does not serve port",
            // The gateway agent's own refusal.
            "not in the allowlist",
            "cannot open streams",
            "outside its permit",
            "is disabled by an admin",
        ],
    ),
    (
        SocksClass::TtlExpired,
        &["did not answer", "did not come online within"],
    ),
    (SocksClass::ConnectionRefused, &["could not open port"]),
];

/// The class of a refusal text as the client receives it.
pub fn classify(text: &str) -> Option<SocksClass> {
    PHRASES
        .iter()
        .find(|(_, phrases)| phrases.iter().any(|p| text.contains(p)))
        .map(|(class, _)| *class)
}

impl Refusal {
    /// The SOCKS reply class of this refusal (`None`: general failure).
    pub fn socks_class(&self) -> Option<SocksClass> {
        use SocksClass::*;
        match self {
            Refusal::NoDevice { .. }
            | Refusal::NotAName { .. }
            | Refusal::Offline { .. }
            | Refusal::BadGatewayName { .. }
            | Refusal::GatewayGone { .. }
            | Refusal::NoGatewayOnline { .. }
            | Refusal::OutsideEveryScope { .. }
            | Refusal::Ambiguous { .. }
            | Refusal::WakeFailed { .. }
            | Refusal::CannotWake { .. } => Some(HostUnreachable),
            Refusal::PortNotServed { .. }
            | Refusal::Disabled { .. }
            | Refusal::OutsidePermit { .. }
            | Refusal::NoGatewayRule { .. }
            | Refusal::RoleCannotOpen { .. } => Some(NotAllowed),
            Refusal::OpenTimeout { .. } | Refusal::WakeTimeout { .. } => Some(TtlExpired),
            Refusal::OpenFailed { .. } => Some(ConnectionRefused),
            Refusal::NotAGateway { .. }
            | Refusal::GatewayOffline { .. }
            | Refusal::GatewayPort { .. }
            | Refusal::OutsideScope { .. }
            | Refusal::NotAPort { .. } => None,
        }
    }
}
