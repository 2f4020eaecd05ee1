//! The SSH layer behind a small interface.
//!
//! Everything SSH lives here, so that the relay, agent and client only see
//! a few types:
//!
//! - [`keys`]: load, generate and fingerprint OpenSSH keys.
//! - [`algorithms`]: the ciphers and key exchanges a server offers.
//! - [`channel`]: a [`Channel`] (one stream) and splicing it to another channel
//!   or to any byte stream, with byte counts.
//! - [`server`]: run one server connection, calling a [`server::ServerSession`].
//! - [`client`]: connect to a relay with a pinned host key and public-key auth.
//! - `proto`: Warren's own implementation of the SSH transport, authentication
//!   and connection protocols, with per-channel flow control: a channel's
//!   window is granted back only as its reader consumes, so a slow reader
//!   stops its own sender and nothing else.

pub mod algorithms;
pub mod channel;
pub mod client;
pub mod fair;
pub mod keys;
pub mod nice;
pub(crate) mod proto;
pub mod server;
pub mod socket;
pub(crate) mod tcp_write;

/// Channel type of direct-path signalling (`crate::p2p`).
pub const P2P_CHANNEL: &str = "p2p@warren";

pub use channel::{
    Channel, IncomingChannel, Pace, PaceWait, Refusal, RefusalKind, SpliceDirection, SpliceStats,
};
pub use keys::{Fingerprint, PrivateKey, PublicKey};
pub use proto::mux::{DataCounts, OpenRefused, buffered_at_least, buffered_bytes, data_counts};
pub use socket::Socket;

/// Fuzzing entry points: each runs one parser over arbitrary bytes. They
/// must never panic (the `fuzz/` targets and the smoke test call them).
pub mod fuzzing {
    pub use super::proto::fuzz::*;
}
