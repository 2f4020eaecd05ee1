//! Direct paths: a controller process (`warren forward`, `socks`, `proxy`)
//! and a device's agent talk QUIC to each other through their NATs, with the
//! relay as the fallback and as the one that authorizes every stream.
//!
//! The pieces, in the order a path comes up:
//!
//! 1. [`signal`]: a `p2p@warren` SSH channel from the controller to the relay,
//!    which routes it exactly as a stream (policy, device online, port
//!    registered) and opens the same channel type on the device's
//!    connection. JSON lines go through it: the relay's `hello` (its UDP
//!    discovery port), the controller's `offer`, the device's `answer`, and
//!    afterwards one `stream` request per stream (the relay audits it and
//!    tells the device which stream ids it allowed).
//! 2. [`discovery`]: each side asks the relay over UDP, from the socket it
//!    will use, which public address its NAT gave that socket.
//! 3. [`punch`]: both sides send probes to each other's candidates at once
//!    (simultaneous open), a few tries in a bounded time.
//! 4. [`quic`]: quinn runs on that same socket; each side presents a
//!    certificate made for this session, and accepts only the other's
//!    certificate whose SHA-256 fingerprint the relay passed it.

pub mod discovery;
pub mod pump;
pub mod punch;
pub mod quic;
pub mod signal;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// SSH channel type of the signalling channel (extension names carry `@`).
pub const CHANNEL_TYPE: &str = crate::ssh::P2P_CHANNEL;

/// How long simultaneous open may take: both NATs need one packet out
/// before either lets the other's in, which takes a round trip or two;
/// a path that is not up within this will not come up.
pub const PUNCH_BUDGET: Duration = Duration::from_secs(3);

/// Probes are resent this often while punching (the first ones are
/// dropped by the NAT that has no mapping yet).
pub const PUNCH_INTERVAL: Duration = Duration::from_millis(100);

/// QUIC keepalive on a direct path: NAT mappings for UDP expire after
/// 30 s or more on common routers; this also bounds how soon a dead path
/// is noticed (see [`DIRECT_IDLE_TIMEOUT`]).
pub const DIRECT_KEEPALIVE: Duration = Duration::from_secs(1);

/// A direct path silent this long is dead; new streams go relayed.
pub const DIRECT_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Largest UDP payload a direct path's packets grow to: the upper bound of
/// quinn's MTU discovery, which starts at QUIC's 1,200 bytes and probes up
/// (a probe too big for the path is lost and the search settles below it;
/// black holes drop back). Ethernet paths stop at 1,452; loopback and jumbo
/// frames go up to this: fewer packets, so fewer encryptions, headers and
/// acknowledgements per GiB. Not higher: quinn sends up to 10 datagrams in
/// one segmentation-offload (GSO) send, whose total the kernel caps at
/// 65,507 bytes (and refuses silently beyond, as it does a too-big probe).
pub const DIRECT_MAX_UDP_PAYLOAD: u16 = 6550;

/// Bytes a direct stream's receiver buffers unread (QUIC flow control): at
/// most this much memory per stream when the local side reads slowly, and
/// the most in flight per stream (8 MiB is 1 Gbit/s at a 64 ms round trip).
pub const DIRECT_STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// Bytes a whole direct path buffers unread over all its streams: bounds
/// the receiver's memory per path.
pub const DIRECT_CONN_WINDOW: u32 = 32 * 1024 * 1024;

/// Bytes a sender keeps unacknowledged over all its streams on a path.
pub const DIRECT_SEND_WINDOW: u64 = 32 * 1024 * 1024;

/// After a failed upgrade, wait this long before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// `warren proxy` waits this long for a direct path, then relays.
pub const PROXY_BUDGET: Duration = Duration::from_millis(500);

/// Whole signalling exchange (hello, discovery, offer, answer) bound.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A device waits this long for the relay's word on a stream id that a
/// direct stream names (the two arrive by different paths).
pub const ALLOW_WAIT: Duration = Duration::from_secs(5);

/// Largest signalling line; offers carry a few addresses and a fingerprint.
pub const MAX_SIGNAL_LINE: usize = 4096;

/// `--p2p` on the controller commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Use a direct path when one comes up, else relay.
    #[default]
    Prefer,
    /// Always relay.
    Off,
    /// Only direct paths; a stream fails when none comes up.
    Require,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "prefer" => Ok(Mode::Prefer),
            "off" => Ok(Mode::Off),
            "require" => Ok(Mode::Require),
            other => Err(format!("--p2p {other:?}: write prefer, off or require")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Prefer => "prefer",
            Mode::Off => "off",
            Mode::Require => "require",
        })
    }
}

/// Which way a stream's bytes went, for the audit log and `ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Relayed,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }
}

/// What a NAT does to one socket's mapping, as discovery saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// Same public port toward every destination: punching works.
    Open,
    /// A new public port per destination: the peer cannot guess it.
    Symmetric,
    /// Only one answer came back; punching may still work.
    Unknown,
}

/// Fresh random bytes (a session id, a transaction id).
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The system generator only fails when the OS has no entropy source,
    // in which case nothing cryptographic works either; ids stay zero.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in ["prefer", "off", "require"] {
            assert_eq!(m.parse::<Mode>().unwrap().to_string(), m);
        }
        let err = "sometimes".parse::<Mode>().unwrap_err();
        assert!(err.contains("prefer, off or require"), "{err}");
    }
}
