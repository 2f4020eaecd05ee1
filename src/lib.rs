//! Warren: reach machines behind NAT by name, over SSH, through one relay.
//!
//! ## One stream, file by file
//!
//! Accept → authenticate → register → route → splice, as a relay serves a
//! controller's `ssh -J tau@relay dev1`:
//!
//! 1. **Accept.** `relay/mod.rs`: `Relay::open` opens the store and returns a
//!    `Server`, whose `serve(listener, shutdown)` starts the background work
//!    (`relay/background.rs`) and runs `relay/listen.rs::accept_loop`, which
//!    only admits (rate limit, cap on unauthenticated connections) and spawns
//!    `relay/connection.rs::run` on the relay's one task tracker.
//! 2. **Authenticate.** `run` hands the socket to `ssh/server.rs::start`. The
//!    SSH layer (`ssh/proto/conn/`: `transport.rs` seals and opens packets,
//!    `exchange.rs` runs the key exchange, `auth.rs` the public-key login
//!    and its deadline, `dispatch.rs` routes each parsed `msg.rs` message)
//!    asks `Connection::check_key` (`relay/connection.rs`), which looks the
//!    key up in the [`store`] and audits the outcome.
//! 3. **Register.** A device sends `tcpip-forward` with its name:
//!    `Connection::tcpip_forward` checks `policy::may_register` and records
//!    the name in `relay/registry.rs` (a new connection takes the name over).
//! 4. **Route.** A controller opens `direct-tcpip` for `dev1:22`:
//!    `relay/stream.rs::stream` asks `relay/router.rs::route`, which turns
//!    (identity, host, port) into a `Route` (device, gateway by scope,
//!    gateway by name) or a `policy::Refusal`, in the order its module doc
//!    gives, then opens `forwarded-tcpip` on the device's connection.
//! 5. **Splice.** `ssh/channel.rs`: `Channel::splice` joins the two channels
//!    with per-channel flow control; `stream.rs` audits the bytes each way.
//!    Data for an idle splice skips its task: the connection task that
//!    opened it queues it on the other connection (`ssh/proto/mux/direct.rs`),
//!    waking it once for all the packets of one read; small data queued
//!    for one channel leaves as one packet (`Conn::coalesce`,
//!    `ssh/proto/conn/commands.rs`), and data for a byte stream (the
//!    agent's target) leaves in one write per batch (`ssh/channel.rs`), or,
//!    for a TCP socket whose splice waits, is written by the connection
//!    task itself (`Channel::splice_tcp`, `ssh/tcp_write.rs`).
//!
//! ## Modules
//!
//! - [`protocol`]: the wire contract that every other module shares: names,
//!   device identities, targets, the relay's address, retry backoff, limits
//!   and timeouts. Imports nothing from the rest of the crate.
//! - [`ssh`]: Warren's own SSH implementation (transport, authentication,
//!   channels with per-channel flow control), behind a small interface: server
//!   session callbacks, a client connection, a [`ssh::Channel`] that can be spliced.
//!   `ssh::fair` is a tenant's fair share of the workers (a FIFO of turns
//!   that bulk connections take per slice, `ssh/proto/conn/slices.rs`);
//!   `relay::fair` gives each system one, and `relay::bandwidth` paces
//!   every relayed path (streams, public ports, listen forwards, hops);
//!   `relay::slice` has the relay's threads ask the scheduler for short
//!   time slices, so a woken relay thread preempts CPU-bound work sooner.
//! - [`relay`]: the public server (the walk above); `relay::expose` serves
//!   public ports that an admin opened, `relay::gateways` keeps the live
//!   gateway scopes, `relay::commands` answers remote admin commands (a
//!   thin adapter over [`admin`]), `relay::live` offers the running relay
//!   to admin through the [`admin::LiveRelay`] trait.
//! - [`agent`]: the device side. Dials the relay, registers its name with
//!   `tcpip-forward`, serves streams to allowed local targets, reconnects forever.
//!   `agent::gateway` dials hosts of a gateway's private network and carries
//!   listen forwards back out; `protocol::gateway` holds the rules both ends
//!   apply. `agent::doctor` is `warren doctor`.
//! - [`client`]: the controller side: `warren proxy` (stdio) and `warren ssh`;
//!   `client::enroll` turns an invite token into a key and a config;
//!   `socks` and `forward` over one self-healing relay connection (`tunnel`);
//!   ssh configs and connect scripts (`sshconfig`).
//! - [`store`]: the relay's state (systems, keys, device status, invites,
//!   the audit log) behind one `Store`, with numbered migrations: SQLite in
//!   the relay's data directory (reads on connections of their own beside
//!   the one writer), or PostgreSQL shared by a cluster of relays
//!   (`store/postgres/`: device claims with epochs, the relay registry,
//!   `LISTEN`/`NOTIFY`, and `holders.rs`: which relay holds each device, in
//!   memory from the claims). In a cluster, `relay/hop.rs` carries a stream to a
//!   device on another relay (asking the store once when the claims name a
//!   relay that no longer holds it), `relay/hop_gateway.rs` to a host behind a
//!   gateway on another relay (a typed route the holder checks again), and
//!   `relay/cluster.rs` closes connections of devices that moved to another
//!   relay; `relay/wake.rs` claims each on-demand wake in the database so
//!   one relay sends it.
//! - [`p2p`]: direct paths between a controller process and an agent:
//!   UDP discovery, signalling through the relay, hole punching, QUIC with
//!   pinned per-session certificates (`relay::p2p` and `relay::udp` are the
//!   relay's part, `agent::p2p` and `client::direct` the two ends).
//! - [`store`]: SQLite state in the relay's data directory (systems, keys, device
//!   status, invites, the audit log), with numbered migrations; reads on
//!   connections of their own beside the one writer.
//! - [`policy`]: who may reach what, and every refusal as data (its text and
//!   a stable code); pure functions, no I/O.
//! - [`audit`]: audit events: a log line each, and a row in the store written
//!   in batches by one writer task, off the data path.
//! - [`mqtt`]: on-demand devices' MQTT side (broker addresses, topics, the
//!   JSON commands and state reports, an MQTT 5 session over rustls), used
//!   by `agent::on_demand` (asleep until a `connect`) and `relay::wake`
//!   (a stream to an asleep device wakes it and waits; `admin::wake` asks
//!   the same through `LiveRelay::wake`).
//! - [`render`]: tables, times and JSON as commands print them; [`files`]:
//!   config files (size-bounded reads, default paths).
//! - [`admin`]: the admin operations (systems, keys, invites, devices,
//!   gateways, public ports, the log, waking on-demand devices) as typed requests and replies. Every
//!   front end is a thin adapter: parse the clap grammar (`admin::grammar`),
//!   `into_request` (values checked: `admin::request`), `check_remote` over
//!   SSH (`admin::remote`, refusals as `policy::CommandRefusal`), `run`
//!   (returns an `Outcome`: the typed `Reply`, audit events, what changed),
//!   `commit`, then `render` (`admin::reply`: today's text, JSON and CSV).
//!   `cli::admin` and `relay::commands` are those adapters; `execute` does
//!   into_request + run + render in one call for callers written against
//!   it. Device status and its table are in `admin::status`; the
//!   [`admin::LiveRelay`] trait is what it needs of a running relay. It
//!   imports neither `relay` nor `cli`.
//!   `admin::access` makes console login links and API tokens.
//! - [`web`]: the HTTP side, beside `cli` over `admin`: the JSON API
//!   (`web::api` builds typed requests from checked values and runs them
//!   through `web::ops`: `run` and `commit` as an SSH caller would; replies
//!   are taken as data, `admin::json_value`), the audit API with keyset
//!   paging and streamed CSV (`web::audit`), sessions, tokens and CSRF
//!   (`web::auth`), the console pages (`web::console`: overview and
//!   devices in `pages`, gateways and ports, keys and the add-a-machine
//!   flow, the log), and `/metrics`.
//! - [`transport`]: how an agent or a client reaches the relay: plain TCP,
//!   `tls://` (SSH inside TLS, ALPN `warren-ssh`) or `wss://` (inside a
//!   WebSocket), certificate checks, HTTP proxies with `CONNECT`, and
//!   errors that name the layer that failed. The SSH layer runs on the
//!   [`ssh::Socket`] it returns.
//! - [`front`]: the relay's one TLS port (`--tls`, usually 443): first bytes
//!   `SSH-` or TLS, then ALPN: SSH (the relay's own connections, via
//!   `Relay::admit`/`serve_connection`), or HTTP (`web`'s router, plus
//!   WebSockets on `/ssh` carrying SSH).
//! - [`metrics`]: the process's Prometheus metrics, counted from audit
//!   events as they are recorded, stream setup and store calls; fixed
//!   labels; text 0.0.4, or OpenMetrics when asked (`metrics::openmetrics`).
//! - [`cli`]: one file per subcommand; `main.rs` only dispatches.
//! - [`fuzz`]: one entry per parser of outside input, for `fuzz-input/`
//!   and the smoke run in the tests.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod agent;
pub mod audit;
pub mod cli;
pub mod client;
pub mod files;
pub mod front;
pub mod fuzz;
pub mod metrics;
pub mod mqtt;
pub mod p2p;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod render;
pub mod ssh;
pub mod store;
pub mod transport;
pub mod web;
