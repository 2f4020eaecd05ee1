//! Warren: reach machines behind NAT by name, over SSH, through one relay.
//!
//! A map of the crate, in the order a connection travels through it:
//!
//! - [`protocol`]: the wire contract that every other module shares: names,
//!   targets, limits and timeouts. Imports nothing from the rest of the crate.
//! - [`ssh`]: Warren's own SSH implementation (transport, authentication,
//!   channels with per-channel flow control), behind a small interface: server
//!   session callbacks, a client connection, a [`ssh::Channel`] that can be spliced.
//! - [`relay`]: the public server. `relay::serve` accepts on a bound listener and
//!   spawns one task per connection (`relay::connection`), which authenticates the
//!   key against the [`store`], registers device names in the live
//!   `relay::registry`, routes controller streams to devices and splices them.
//! - [`agent`]: the device side. Dials the relay, registers its name with
//!   `tcpip-forward`, serves streams to allowed local targets, reconnects forever.
//! - [`client`]: the controller side: `warren proxy` (stdio) and `warren ssh`.
//! - [`store`]: SQLite state in the relay's data directory (systems, keys, device
//!   status), with numbered migrations.
//! - [`policy`]: who may reach what; pure functions, no I/O.
//! - [`audit`]: structured audit events (a log line per event).
//! - [`cli`]: one file per subcommand; `main.rs` only dispatches.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod audit;
pub mod cli;
pub mod client;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod ssh;
pub mod store;
