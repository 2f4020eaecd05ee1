//! Warren: reach machines behind NAT by name, over SSH, through one relay.
//!
//! A map of the crate, in the order a connection travels through it:
//!
//! - [`protocol`]: the wire contract that every other module shares: names,
//!   device identities, targets, the relay's address, retry backoff, limits
//!   and timeouts. Imports nothing from the rest of the crate.
//! - [`ssh`]: Warren's own SSH implementation (transport, authentication,
//!   channels with per-channel flow control), behind a small interface: server
//!   session callbacks, a client connection, a [`ssh::Channel`] that can be spliced.
//! - [`relay`]: the public server. `relay::serve` accepts on a bound listener and
//!   spawns one task per connection (`relay::connection`), which authenticates the
//!   key against the [`store`], registers device names in the live
//!   `relay::registry`, routes controller streams to devices and splices them.
//!   `relay::expose` serves public ports that an admin opened.
//! - [`agent`]: the device side. Dials the relay, registers its name with
//!   `tcpip-forward`, serves streams to allowed local targets, reconnects forever.
//! - Gateways (a device that also reaches hosts of its private network):
//!   `protocol::gateway` holds the rules and wire contract both ends apply,
//!   `relay::gateways` routes a host that is no device name to the gateway
//!   whose scope holds it, and `agent::gateway` checks and dials it, and
//!   carries listen forwards back out. `agent::doctor` is `warren doctor`.
//! - [`client`]: the controller side: `warren proxy` (stdio) and `warren ssh`;
//!   `client::enroll` turns an invite token into a key and a config;
//!   `socks` and `forward` over one self-healing relay connection (`tunnel`);
//!   ssh configs and connect scripts (`sshconfig`).
//! - [`store`]: SQLite state in the relay's data directory (systems, keys, device
//!   status, invites, the audit log), with numbered migrations.
//! - [`policy`]: who may reach what, and every refusal as data (its text and
//!   a stable code); pure functions, no I/O.
//! - [`audit`]: audit events: a log line each, and a row in the store written
//!   in batches by one writer task, off the data path.
//! - [`render`]: tables, times and JSON as commands print them; [`files`]:
//!   config files (size-bounded reads, default paths).
//! - [`cli`]: one file per subcommand; `main.rs` only dispatches.
//! - [`fuzz`]: one entry per parser of outside input, for `fuzz-input/`
//!   and the smoke run in the tests.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod audit;
pub mod cli;
pub mod client;
pub mod files;
pub mod fuzz;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod render;
pub mod ssh;
pub mod store;
