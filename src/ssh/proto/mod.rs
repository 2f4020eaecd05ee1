//! Warren's own SSH protocol implementation (RFC 4253, 4252, 4254), used by
//! the server and client halves of [`crate::ssh`].
//!
//! - [`wire`]: bounds-checked encoding and decoding of SSH types.
//! - [`packet`]: the binary packet protocol with the AEAD ciphers.
//! - [`kex`]: KEXINIT negotiation, mlkem768x25519-sha256 and curve25519-sha256,
//!   key derivation, host keys.
//! - [`readbuf`]: read buffers, and the reuse of bulk ones.
//! - [`outbox`]: sealed packets waiting for the socket.
//! - [`mux`]: per-channel buffers, windows and the command queue.
//! - [`conn`]: the connection task: transport, key exchange, authentication,
//!   channels, and the one message parser ([`conn::msg`]).

pub mod conn;
pub mod fuzz;
pub mod kex;
pub mod mux;
pub mod outbox;
pub mod packet;
pub mod queue;
pub mod readbuf;
pub mod wire;

#[cfg(test)]
mod tests;
