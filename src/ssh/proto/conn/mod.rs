//! One SSH connection, server or client, in one task, made of parts that
//! each own their state:
//!
//! - [`transport`]: the socket, packets, sequence numbers and keys in
//!   use; it alone decides when a packet may be sealed.
//! - [`exchange`]: key exchange and rekeying, strict kex.
//! - [`auth`]: user authentication (publickey only), login deadline.
//! - [`channels`] and [`commands`]: the channel multiplexer, what the peer
//!   sends about channels and what the application asks.
//! - [`msg`] parses each message once; [`dispatch`] gates it and calls its
//!   handler.
//!
//! This file holds the loop: socket, commands and timers.
//!
//! The task never waits on a single channel: received data goes into the
//! channel's buffer (bounded by the window we granted), and outgoing data
//! comes from handles that already waited for their own window.

mod auth;
mod channels;
mod commands;
mod dispatch;
mod exchange;
pub mod msg;
mod slices;
mod transport;

#[cfg(test)]
mod coalesce_tests;
#[cfg(test)]
mod seal_tests;
#[cfg(test)]
mod size_tests;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ssh_key::{PrivateKey, PublicKey};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use super::kex::{HostKey, KexAlg};
use super::mux::{self, ChanHandle, Cmd, ConnTx, Ctl, Ended, OUTBOX, OpenRequest};
use super::packet::{CipherAlg, PacketError};
use super::queue::{self, CmdRx};
use super::wire::{WireError, Writer, msg as m, reason};
use auth::{Auth, ClientAuth};
use channels::Channels;
use exchange::{Identity, KeyExchange};
use slices::Slices;
use transport::Transport;

pub use msg::user_key;
#[cfg(test)]
pub use transport::READ_MAX;
pub use transport::version_exchange;

/// Stop reading the socket while this much waits to be written: only a
/// peer that sends requests and never reads the answers gets here (channel
/// data stops at [`transport::WRITE_HIGH`]), so two Warren peers that both
/// write a lot always go on reading each other.
pub const READ_STOP: usize = 4 * 1024 * 1024;
/// A socket that took fewer bytes than this in a whole
/// [`Settings::unpin_after`] counts as stalled (see [`Conn::unpin`]).
const STALLED_BELOW: u64 = 64 * 1024;
/// Buffers (the read buffer, the outbox) are given back this long after
/// they were first used, if they are empty then: an idle connection keeps
/// none (16 KiB of read buffer and the key exchange's 2.5 KiB of outbox
/// each), and a busy one allocates them again at most once per period.
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);
/// Time allowed to flush a DISCONNECT.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// A key exchange not finished within this ends the connection: a peer
/// could otherwise hold a rekey open, and everything it defers, forever.
/// OpenSSH's own login grace time is 120 s for the whole handshake.
pub const KEX_TIMEOUT: Duration = Duration::from_secs(60);
/// Packets one key may protect in each direction: the sequence number is
/// part of the nonce, and must never repeat under one key (RFC 4344 §3.1
/// asks for a rekey well before). A rekey starts at half of it.
pub const PACKETS_PER_KEY: u64 = 1 << 32;

pub const VERSION: &str = concat!("SSH-2.0-warren_", env!("CARGO_PKG_VERSION"));

/// What woke a connection's loop.
enum Wake {
    Read(std::io::Result<()>),
    Write(std::io::Result<()>),
    Cmd(Option<Cmd>),
    Kick,
    Timer,
}

/// Output of a command run on a session channel.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: u32,
}

/// What the application decides for the connection.
pub trait Events: Send + 'static {
    /// Server: whether `key` may log in as `user` (`verified`: its signature checked out).
    fn check_key(
        &mut self,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> impl Future<Output = bool> + Send;
    /// Server: after `check_key` said no, a reason to end the connection
    /// with (DISCONNECT "by application") instead of letting the peer try
    /// another key: no key can log in now (the relay's store is away).
    fn login_refusal(&mut self) -> Option<String> {
        None
    }
    /// Authentication succeeded (both sides).
    fn authenticated(&mut self, tx: ConnTx);
    /// A global request; the answer is sent if the peer wants one.
    fn global_request(&mut self, name: &str, data: &[u8]) -> impl Future<Output = bool> + Send;
    /// The peer opens a stream channel; `incoming` is accepted or refused by the application.
    fn channel_open(&mut self, open: OpenRequest, incoming: Incoming);
    /// Server: a command on a session channel (empty for a shell).
    fn exec(&mut self, command: &str) -> impl Future<Output = ExecOutput> + Send;
    /// Server: a command that may wait (on a database, on another process's
    /// lock), run by a task of its own so that the connection keeps serving
    /// its other channels meanwhile. `None`: the command runs through
    /// [`Events::exec`] instead.
    fn exec_task(&mut self, _command: &str) -> Option<ExecTask> {
        None
    }
}

/// A command's output, computed by a task apart from the connection's.
pub type ExecTask = std::pin::Pin<Box<dyn Future<Output = ExecOutput> + Send>>;

/// A channel the peer asked for, before the application's answer.
pub struct Incoming {
    pub handle: ChanHandle,
}

impl Incoming {
    pub fn accept(self) -> ChanHandle {
        self.handle.tx.send(Cmd::Confirm(self.handle.id));
        self.handle
    }

    /// Refuses with a [`super::wire::open_failure`] code.
    pub fn refuse(self, code: u32, text: &str) {
        self.handle.tx.send(Cmd::Refuse {
            id: self.handle.id,
            code,
            text: text.to_string(),
        });
    }
}

/// Called with the server's host key blob; says whether to trust it.
pub type HostCheck = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// Which side we are.
pub enum Side {
    Server {
        host_key: Arc<HostKey>,
        max_auth_attempts: usize,
    },
    Client {
        user: String,
        key: Arc<PrivateKey>,
        /// Called with the host key blob; says whether to trust it.
        check_host: HostCheck,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
}

/// Tunables; tests lower the rekey limits.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Offered in this order (the client's order decides).
    pub ciphers: Vec<CipherAlg>,
    /// Key exchanges offered, in this order.
    pub kex: Vec<KexAlg>,
    /// Refuse a peer that does not offer strict key exchange
    /// (`kex-strict-*-v00@openssh.com`, the Terrapin countermeasure).
    pub require_strict_kex: bool,
    pub rekey_bytes: u64,
    pub rekey_time: Duration,
    /// Send a keepalive after this much silence; give up after `.1` unanswered.
    pub keepalive: Option<(Duration, usize)>,
    /// See [`mux::UNPIN_AFTER`].
    pub unpin_after: Duration,
    /// See [`KEX_TIMEOUT`].
    pub kex_timeout: Duration,
    /// See [`PACKETS_PER_KEY`].
    pub packets_per_key: u64,
    /// Server: a peer not logged in this long after the connection started
    /// is sent DISCONNECT ("authentication timeout"); awaited key checks
    /// are cut off at the same time. `None`: no limit.
    pub login_grace: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ciphers: CipherAlg::preferred(),
            kex: KexAlg::ALL.to_vec(),
            require_strict_kex: false,
            rekey_bytes: 1 << 30,
            rekey_time: Duration::from_secs(3600),
            keepalive: None,
            unpin_after: mux::UNPIN_AFTER,
            kex_timeout: KEX_TIMEOUT,
            packets_per_key: PACKETS_PER_KEY,
            login_grace: None,
        }
    }
}

#[derive(Debug)]
enum Fail {
    /// Send DISCONNECT with this code and text, then close.
    Protocol(u32, String),
    Io(std::io::Error),
    Peer(String),
    Eof,
    /// A packet could not be sealed: nothing more can be sent, not even
    /// a DISCONNECT.
    Broken(&'static str),
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Fail {
        Fail::Protocol(reason::PROTOCOL_ERROR, e.to_string())
    }
}

impl From<PacketError> for Fail {
    fn from(e: PacketError) -> Fail {
        let code = if e == PacketError::Mac {
            reason::MAC_ERROR
        } else {
            reason::PROTOCOL_ERROR
        };
        Fail::Protocol(code, e.to_string())
    }
}

fn proto(text: impl Into<String>) -> Fail {
    Fail::Protocol(reason::PROTOCOL_ERROR, text.into())
}

pub struct Conn<E: Events> {
    t: Transport,
    kx: KeyExchange,
    auth: Auth,
    ch: Channels,
    events: E,
    server: bool,
    keepalive: Option<(Duration, usize)>,
    unpin_after: Duration,
    cmds: CmdRx,
    tx: ConnTx,
    /// A packet arrived since the last keepalive round.
    heard: bool,
    missed: usize,
    next_keepalive: Option<Instant>,
    /// When [`Conn::unpin`] runs next, while data waits anywhere.
    next_unpin: Option<Instant>,
    /// Commands taken out of the queue by [`Conn::unpin`] while the socket
    /// stalled, to run before anything newer.
    backlog: VecDeque<Cmd>,
    /// Bytes written to the socket at the last unpin round.
    written_at_unpin: u64,
    /// When empty buffers are given back next (see [`RELEASE_AFTER`]).
    next_release: Option<Instant>,
}

impl<E: Events> Conn<E> {
    /// A connection past the version exchange. `peer_version` is the
    /// peer's version line.
    pub fn new(
        stream: impl Into<crate::ssh::socket::Socket>,
        peer_version: Vec<u8>,
        side: Side,
        settings: Settings,
        events: E,
    ) -> (Conn<E>, ConnTx) {
        let server = matches!(side, Side::Server { .. });
        let ours = VERSION.as_bytes().to_vec();
        let (v_c, v_s) = if server {
            (peer_version, ours)
        } else {
            (ours, peer_version)
        };
        let (cmd_tx, cmds) = queue::channel();
        let tx = ConnTx {
            cmds: cmd_tx,
            space: Arc::new(Semaphore::new(OUTBOX)),
            ctl: Ctl::with_unpin_after(settings.unpin_after),
        };
        let now = Instant::now();
        let (identity, auth) = match side {
            Side::Server {
                host_key,
                max_auth_attempts,
            } => {
                let deadline = settings.login_grace.map(|g| now + g);
                let auth = Auth::server(max_auth_attempts, deadline);
                (Identity::Server(host_key), auth)
            }
            Side::Client {
                user,
                key,
                check_host,
                done,
            } => {
                let client = ClientAuth {
                    user,
                    key,
                    server_sig_algs: None,
                    done,
                };
                (Identity::Client(check_host), Auth::client(client))
            }
        };
        let conn = Conn {
            t: Transport::new(stream.into(), settings.packets_per_key),
            kx: KeyExchange::new(identity, &settings, v_c, v_s, tx.ctl.clone()),
            auth,
            ch: Channels::default(),
            events,
            server,
            keepalive: settings.keepalive,
            unpin_after: settings.unpin_after,
            cmds,
            tx: tx.clone(),
            heard: false,
            missed: 0,
            next_keepalive: settings.keepalive.map(|(i, _)| now + i),
            next_unpin: None,
            backlog: VecDeque::new(),
            written_at_unpin: 0,
            next_release: None,
        };
        (conn, tx)
    }

    /// Runs the connection to its end.
    ///
    /// Not an `async fn`: its state would hold the connection twice (the
    /// argument, and the local it is moved to), and this future is what an
    /// idle connection's task costs. The block uses `self` where it was
    /// captured.
    // The `async fn` form is what this avoids (see above and size_tests).
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl Future<Output = Ended> + Send {
        async move { self.run_to_end().await }
    }

    async fn run_to_end(&mut self) -> Ended {
        let ended = match self.run_inner().await {
            Ok(said) => Ended::Local(said),
            Err(Fail::Protocol(code, text)) => {
                tracing::debug!(%text, "closing SSH connection");
                Box::pin(self.send_disconnect(code, &text)).await;
                Ended::Local(text)
            }
            Err(Fail::Peer(text)) => Ended::PeerSaid(text),
            Err(Fail::Eof) => Ended::Closed,
            Err(Fail::Io(e)) => Ended::Local(format!("socket error: {e}")),
            Err(Fail::Broken(why)) => {
                tracing::warn!(why, "closing SSH connection");
                Ended::Local(why.to_string())
            }
        };
        self.finish(&ended);
        ended
    }

    fn finish(&mut self, ended: &Ended) {
        self.ch.close_all();
        self.tx.space.close();
        self.cmds.close();
        let text = match ended {
            Ended::PeerSaid(t) => format!("relay closed the connection: {t}"),
            Ended::Closed => "relay closed the connection".to_string(),
            Ended::Local(t) => t.clone(),
        };
        self.auth.tell(Err(text));
        self.tx.ctl.ended.send_replace(Some(ended.clone()));
    }

    async fn send_disconnect(&mut self, code: u32, text: &str) {
        let msg = Writer::new(m::DISCONNECT)
            .u32(code)
            .string(text)
            .string("")
            .finish();
        self.t.seal_now(&msg);
        self.t.flush(FLUSH_LIMIT).await;
    }

    /// Sends a message (see [`Transport::send`]).
    fn send(&mut self, payload: Vec<u8>) {
        self.t.send(payload);
        #[cfg(test)]
        self.tx
            .ctl
            .deferred_peak
            .send_modify(|n| *n = (*n).max(self.t.deferred_bytes));
    }

    /// The loop: reads the socket, takes commands, and wakes for timers,
    /// until the connection ends.
    async fn run_inner(&mut self) -> Result<String, Fail> {
        self.kx.start(&mut self.t);
        let ctl = self.tx.ctl.clone();
        let mut slices = Slices::default();
        loop {
            if let Some(why) = self.t.broken {
                return Err(Fail::Broken(why));
            }
            if let Some(reason) = self.tx.ctl.take_disconnect() {
                Box::pin(self.send_disconnect(reason::BY_APPLICATION, &reason)).await;
                return Ok(reason);
            }
            self.kx.maybe_rekey(&mut self.t);
            let can_read = self.t.pending() + self.t.deferred_bytes < READ_STOP;
            let can_cmd = self.run_backlog();
            let timer = self.timer();
            let wake = {
                let wait = std::pin::pin!(self.wait(can_read, can_cmd, timer));
                slices.unless_waiting(wait).await
            };
            let woke = Slices::woke(ctl.share.get());
            slices.before_work(ctl.share.get()).await;
            {
                let act = std::pin::pin!(self.act(wake));
                slices.unless_waiting(act).await?;
            }
            if self.t.pending() > 0 {
                self.t.write_some()?;
                if self.t.pending() > 0 {
                    self.unpin_later();
                }
            }
            slices.trace(ctl.share.get(), woke, self.t.read, self.t.written);
            // A bulk connection's socket is always ready, so without this
            // its task would keep a worker for a whole scheduler budget
            // while other tenants' small messages queue behind it.
            let moved = self.t.read + self.t.written;
            slices.after_work(moved, ctl.share.get()).await;
            if self.next_release.is_none() && self.holds_buffers() {
                self.next_release = Some(Instant::now() + RELEASE_AFTER);
            }
        }
    }

    /// Waits until the socket, a command, a kick or a timer wakes the loop.
    async fn wait(&mut self, can_read: bool, can_cmd: bool, timer: Instant) -> Wake {
        tokio::select! {
            r = self.t.stream.readable(), if can_read => Wake::Read(r),
            r = self.t.stream.writable(), if self.t.pending() > 0 => Wake::Write(r),
            c = self.cmds.recv(), if can_cmd => Wake::Cmd(c),
            _ = self.tx.ctl.kick.notified() => Wake::Kick,
            _ = tokio::time::sleep_until(timer) => Wake::Timer,
        }
    }

    /// Does what woke the loop.
    async fn act(&mut self, wake: Wake) -> Result<(), Fail> {
        match wake {
            Wake::Read(r) => {
                r.map_err(Fail::Io)?;
                self.t.read_some()?;
                self.process().await?;
            }
            Wake::Write(r) => {
                r.map_err(Fail::Io)?;
                self.t.write_some()?;
            }
            Wake::Cmd(Some(c)) => {
                self.command(c);
                // Take what else is queued while we are here.
                while self.t.may_take_commands() {
                    match self.cmds.try_recv() {
                        Ok(c) => self.command(c),
                        Err(_) => break,
                    }
                }
            }
            Wake::Cmd(None) | Wake::Kick => {}
            Wake::Timer => self.timers()?,
        }
        Ok(())
    }

    /// Runs the commands [`Conn::unpin`] set aside, as far as the transport
    /// takes them; whether newer commands may be taken now.
    fn run_backlog(&mut self) -> bool {
        if !self.t.may_take_commands() {
            return false;
        }
        if self.backlog.is_empty() {
            return true;
        }
        while self.t.may_take_commands() {
            let Some(c) = self.backlog.pop_front() else {
                break;
            };
            self.command(c);
        }
        // Newer commands wait until the backlog is gone.
        self.t.may_take_commands() && self.backlog.is_empty()
    }

    /// When the loop wakes with nothing else to do: the next keepalive,
    /// unpin round, rekey time, key exchange or login deadline.
    fn timer(&self) -> Instant {
        let mut timer = self
            .next_keepalive
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        for t in [
            self.kx.deadline(),
            self.next_unpin,
            self.next_release,
            self.auth.pending_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            timer = timer.min(t);
        }
        timer
    }

    fn timers(&mut self) -> Result<(), Fail> {
        let now = Instant::now();
        if self.next_keepalive.is_some_and(|t| t <= now) {
            self.keepalive()?;
        }
        if self.next_unpin.is_some_and(|t| t <= now) {
            self.unpin();
        }
        if self.next_release.is_some_and(|t| t <= now) {
            self.next_release = None;
            self.release_if_idle();
        }
        self.kx.check_deadline()?;
        if self.auth.pending_deadline().is_some_and(|t| t <= now) {
            return Err(auth::timed_out());
        }
        Ok(())
    }

    /// Whether [`Conn::release_if_idle`] could give memory back.
    fn holds_buffers(&self) -> bool {
        self.t.holds_buffers() || self.cmds.holds_slots() || self.backlog.capacity() > 0
    }

    /// Gives back the buffers and queue slots that nothing waits in.
    fn release_if_idle(&mut self) {
        self.t.release_if_idle();
        self.cmds.release_if_empty();
        if self.backlog.is_empty() {
            self.backlog = VecDeque::new();
        }
    }

    fn keepalive(&mut self) -> Result<(), Fail> {
        self.release_if_idle();
        let Some((interval, max)) = self.keepalive else {
            self.next_keepalive = None;
            return Ok(());
        };
        self.next_keepalive = Some(Instant::now() + interval);
        if std::mem::take(&mut self.heard) {
            self.missed = 0;
            return Ok(());
        }
        if self.missed >= max {
            return Err(Fail::Protocol(
                reason::BY_APPLICATION,
                "keepalive timeout: peer stopped answering".into(),
            ));
        }
        self.missed += 1;
        if self.auth.authed {
            let msg = Writer::new(m::GLOBAL_REQUEST)
                .string("keepalive@openssh.com")
                .bool(true)
                .finish();
            self.ch.pending_globals.push_back(None);
            self.send(msg);
        }
        Ok(())
    }

    /// Makes sure [`Conn::unpin`] runs within [`Settings::unpin_after`].
    fn unpin_later(&mut self) {
        if self.next_unpin.is_none() {
            self.next_unpin = Some(Instant::now() + self.unpin_after);
            // Socket progress counts from here, not from a round long ago.
            self.written_at_unpin = self.t.written;
        }
    }

    /// One round of [`mux::UNPIN_AFTER`], while data waits: channel data
    /// queued since before the last round gets buffers of its own, and so
    /// does everything waiting for a socket that took less than
    /// [`STALLED_BELOW`] since then: sealed frames in the outbox, and data
    /// in the command queue, which moves to the backlog. A stalled reader
    /// or peer then holds its own bytes, not the read buffers they arrived
    /// in.
    fn unpin(&mut self) {
        let mut again = self.ch.unpin_waiting();
        if self.t.pending() > 0 {
            if self.t.written - self.written_at_unpin < STALLED_BELOW {
                // Commands stay unsealed in the backlog, so the outbox
                // budget (given back as data is sealed) still bounds them.
                while let Ok(mut c) = self.cmds.try_recv() {
                    if let Cmd::Data { data, .. } = &mut c {
                        data.unpin();
                    }
                    self.backlog.push_back(c);
                }
                self.t.out.unpin();
            }
            again = true;
        }
        self.written_at_unpin = self.t.written;
        self.next_unpin = again.then(|| Instant::now() + self.unpin_after);
        #[cfg(test)]
        self.tx.ctl.unpins.send_modify(|n| *n += 1);
    }
}
