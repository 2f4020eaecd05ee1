//! The SSH layer behind a small interface.
//!
//! Everything that touches the SSH library lives here, so that the connection
//! layer can be replaced (a later issue gives Warren its own, with per-channel
//! flow control) without touching the relay, agent or client:
//!
//! - [`keys`]: load, generate and fingerprint OpenSSH keys.
//! - [`channel`]: a [`Channel`] (one stream) and splicing it to another channel
//!   or to any byte stream, with byte counts.
//! - [`server`]: run one server connection, calling a [`server::ServerSession`].
//! - [`client`]: connect to a relay with a pinned host key and public-key auth.

pub mod channel;
pub mod client;
pub mod keys;
pub mod server;

pub use channel::{Channel, IncomingChannel, Refusal, SpliceStats};
pub use keys::{Fingerprint, PrivateKey, PublicKey};
