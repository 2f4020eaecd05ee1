//! One SSH connection, server or client, in one task: transport (version
//! exchange, key exchange and rekeying, strict kex), user authentication
//! (publickey only) and the channel multiplexer.
//!
//! The task never waits on a single channel: received data goes into the
//! channel's buffer (bounded by the window we granted), and outgoing data
//! comes from handles that already waited for their own window.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use signature::{Signer, Verifier};
use ssh_encoding::Encode;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey, Signature};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::kex::{self, ClientKex, HashInput, HostKey, KexAlg, Negotiated};
use super::mux::{
    self, ChanHandle, ChanShared, Chunk, Cmd, ConnTx, Ctl, Ended, In, OUTBOX, OpenReply,
    OpenRequest, WINDOW,
};
use super::outbox::{self, Outbox};
use super::packet::{CipherAlg, Direction, PacketError};
use super::readbuf::ReadBuf;
use super::wire::{Reader, WireError, Writer, msg, reason};
use crate::protocol::limits::MAX_PACKET_SIZE;

/// Longest version line (RFC 4253 §4.2: 255 with CR LF), and how many
/// other lines a server may send before it.
const MAX_VERSION_LINE: usize = 255;
const MAX_PRE_BANNER_LINES: usize = 20;
/// Stop taking channel data from the application while this much waits
/// to be written to the socket.
const WRITE_HIGH: usize = 256 * 1024;
/// Stop reading the socket while this much waits to be written: only a
/// peer that sends requests and never reads the answers gets here (channel
/// data stops at [`WRITE_HIGH`]), so two Warren peers that both write a lot
/// always go on reading each other.
pub const READ_STOP: usize = 4 * 1024 * 1024;
/// A socket that took fewer bytes than this in a whole
/// [`Settings::unpin_after`] counts as stalled (see [`Conn::unpin`]).
const STALLED_BELOW: u64 = 64 * 1024;
/// Channels one connection may have open at once.
const MAX_CHANNELS: usize = 4096;
/// First and largest read from the socket.
const READ_MIN: usize = 16 * 1024;
pub const READ_MAX: usize = 512 * 1024;
/// Channel data packets from this size (payload) are passed on whole, to be
/// sealed again in place by a relay, and not copied.
const FRAME_MIN: usize = 9 + 8192;
/// Time allowed to flush a DISCONNECT.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// What one message held back during a key exchange costs beside its
/// bytes (its allocation and queue slot); counted toward [`READ_STOP`], so
/// a peer that never answers our KEXINIT cannot make the queue grow by
/// sending requests whose replies wait.
const DEFERRED_OVERHEAD: usize = 64;
/// A key exchange not finished within this ends the connection: a peer
/// could otherwise hold a rekey open, and everything it defers, forever.
/// OpenSSH's own login grace time is 120 s for the whole handshake.
pub const KEX_TIMEOUT: Duration = Duration::from_secs(60);
/// Packets one key may protect in each direction: the sequence number is
/// part of the nonce, and must never repeat under one key (RFC 4344 §3.1
/// asks for a rekey well before). A rekey starts at half of it.
pub const PACKETS_PER_KEY: u64 = 1 << 32;
/// Public-key queries (no signature) per attempt allowed: a client offers
/// each key it holds before signing with one, but every query costs the
/// application a key lookup and tells the peer whether a key is known.
const QUERIES_PER_ATTEMPT: usize = 2;
/// Smallest maximum packet size we accept from a peer for a channel:
/// below it each byte of data costs dozens on the wire (OpenSSH offers
/// 16 KiB and more; RFC 4253 requires every peer to take 32 KiB packets).
const MIN_PEER_PACKET: u32 = 1024;

pub const VERSION: &str = concat!("SSH-2.0-warren_", env!("CARGO_PKG_VERSION"));

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

/// Exchanges version lines. Returns the peer's line (without CR LF).
pub async fn version_exchange(stream: &mut TcpStream, server: bool) -> Result<Vec<u8>, String> {
    stream
        .write_all(format!("{VERSION}\r\n").as_bytes())
        .await
        .map_err(|e| format!("sending version: {e}"))?;
    // Read byte by byte: nothing past the line may be consumed, and this
    // happens once per connection.
    let mut lines = 0;
    loop {
        let mut line = Vec::with_capacity(64);
        loop {
            let b = stream
                .read_u8()
                .await
                .map_err(|e| format!("reading version: {e}"))?;
            if b == b'\n' {
                break;
            }
            if line.len() >= MAX_VERSION_LINE {
                return Err("version line too long".into());
            }
            line.push(b);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.starts_with(b"SSH-") {
            if !line.starts_with(b"SSH-2.0-") && !line.starts_with(b"SSH-1.99-") {
                return Err(format!(
                    "unsupported protocol version {:?}",
                    String::from_utf8_lossy(&line)
                ));
            }
            return Ok(line);
        }
        lines += 1;
        // Only a server may send lines before its version (RFC 4253 §4.2).
        if server || lines > MAX_PRE_BANNER_LINES {
            return Err("peer did not start with an SSH version line".into());
        }
    }
}

struct KexRun {
    ours: Vec<u8>,
    theirs: Option<Vec<u8>>,
    neg: Option<Negotiated>,
    /// The client's keys, between KEX_ECDH_INIT and the reply.
    eph: Option<(ClientKex, Vec<u8>)>,
    next_out: Option<Direction>,
    next_in: Option<Direction>,
    sent_newkeys: bool,
    ignore_next: bool,
    /// See [`Settings::kex_timeout`].
    started: Instant,
}

#[derive(PartialEq, Eq)]
enum ChanKind {
    /// We asked to open; waiting for the peer.
    Opening,
    /// The peer asked; waiting for the application.
    Incoming,
    Open,
    /// A server session channel (exec), handled here.
    Session,
}

struct Entry {
    shared: Arc<ChanShared>,
    remote_id: u32,
    kind: ChanKind,
    reply: Option<OpenReply>,
    /// Window we still grant the peer.
    local_window: u32,
    /// Largest data packet we told the peer it may send on this channel.
    local_max: u32,
    sent_eof: bool,
    sent_close: bool,
    /// The peer sent EOF, and an exit status or signal: each once.
    got_eof: bool,
    got_exit: bool,
}

pub struct Conn<E: Events> {
    stream: TcpStream,
    events: E,
    side: Side,
    settings: Settings,
    server: bool,
    v_c: Vec<u8>,
    v_s: Vec<u8>,
    rbuf: ReadBuf,
    /// Bytes the next read asks for (see [`Conn::read_some`]).
    read_chunk: usize,
    need: Option<usize>,
    out: Outbox,
    open: Direction,
    seal: Direction,
    seq_in: u32,
    seq_out: u32,
    session_id: Option<Vec<u8>>,
    kex: Option<KexRun>,
    /// Packets received before the peer's first KEXINIT (strict kex wants none).
    first_kex_done: bool,
    strict: bool,
    packets_in: u64,
    deferred: VecDeque<Vec<u8>>,
    /// What [`Conn::deferred`] holds, with [`DEFERRED_OVERHEAD`] each.
    deferred_bytes: usize,
    /// Packets opened and sealed under the current keys (see
    /// [`Settings::packets_per_key`]).
    packets_in_key: u64,
    packets_out_key: u64,
    /// Why sealing stopped; set, the connection ends before writing more.
    broken: Option<&'static str>,
    bytes_since_kex: u64,
    kex_at: Instant,
    authed: bool,
    /// The client asked for the user authentication service.
    userauth: bool,
    probed: bool,
    auth_failures: usize,
    /// Public-key queries without a signature.
    key_queries: usize,
    server_sig_algs: Option<String>,
    chans: HashMap<u32, Entry>,
    next_id: u32,
    pending_globals: VecDeque<Option<oneshot::Sender<bool>>>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    tx: ConnTx,
    heard: bool,
    missed: usize,
    next_keepalive: Option<Instant>,
    /// When [`Conn::unpin`] runs next, while data waits anywhere.
    next_unpin: Option<Instant>,
    /// Commands taken out of the queue by [`Conn::unpin`] while the socket
    /// stalled, to run before anything newer.
    backlog: VecDeque<Cmd>,
    /// Channels closed while their reader had not taken everything yet.
    closed_waiting: Vec<std::sync::Weak<ChanShared>>,
    /// Bytes written to the socket, in all and at the last unpin round.
    written: u64,
    written_at_unpin: u64,
}

impl<E: Events> Conn<E> {
    /// A connection past the version exchange. `peer_version` is the
    /// peer's version line.
    pub fn new(
        stream: TcpStream,
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
        let (cmd_tx, cmds) = mpsc::unbounded_channel();
        let tx = ConnTx {
            cmds: cmd_tx,
            space: Arc::new(Semaphore::new(OUTBOX)),
            ctl: Ctl::with_unpin_after(settings.unpin_after),
        };
        let next_keepalive = settings.keepalive.map(|(i, _)| Instant::now() + i);
        let conn = Conn {
            stream,
            events,
            side,
            settings,
            server,
            v_c,
            v_s,
            rbuf: ReadBuf::default(),
            read_chunk: READ_MIN,
            need: None,
            out: Outbox::default(),
            open: Direction::plain(),
            seal: Direction::plain(),
            seq_in: 0,
            seq_out: 0,
            session_id: None,
            kex: None,
            first_kex_done: false,
            strict: false,
            packets_in: 0,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            packets_in_key: 0,
            packets_out_key: 0,
            broken: None,
            bytes_since_kex: 0,
            kex_at: Instant::now(),
            authed: false,
            userauth: false,
            probed: false,
            auth_failures: 0,
            key_queries: 0,
            server_sig_algs: None,
            chans: HashMap::new(),
            next_id: 0,
            pending_globals: VecDeque::new(),
            cmds,
            tx: tx.clone(),
            heard: false,
            missed: 0,
            next_keepalive,
            next_unpin: None,
            backlog: VecDeque::new(),
            closed_waiting: Vec::new(),
            written: 0,
            written_at_unpin: 0,
        };
        (conn, tx)
    }

    /// Runs the connection to its end.
    pub async fn run(mut self) -> Ended {
        let ended = match self.run_inner().await {
            Ok(said) => Ended::Local(said),
            Err(Fail::Protocol(code, text)) => {
                tracing::debug!(%text, "closing SSH connection");
                self.send_disconnect(code, &text).await;
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
        // No unpin round comes after this: what readers have not taken yet
        // gets its own buffers now.
        for w in self.closed_waiting.drain(..) {
            if let Some(shared) = w.upgrade() {
                shared.unpin_all();
            }
        }
        for (_, e) in self.chans.drain() {
            e.shared.unpin_all();
            e.shared.close();
            if let Some(reply) = e.reply {
                let _ = reply.send(Err("connection closed".into()));
            }
        }
        self.tx.space.close();
        self.cmds.close();
        if let Side::Client { done, .. } = &mut self.side
            && let Some(done) = done.take()
        {
            let text = match ended {
                Ended::PeerSaid(t) => format!("relay closed the connection: {t}"),
                Ended::Closed => "relay closed the connection".to_string(),
                Ended::Local(t) => t.clone(),
            };
            let _ = done.send(Err(text));
        }
        self.tx.ctl.ended.send_replace(Some(ended.clone()));
    }

    async fn send_disconnect(&mut self, code: u32, text: &str) {
        let m = Writer::new(msg::DISCONNECT)
            .u32(code)
            .string(text)
            .string("")
            .finish();
        self.seal_now(&m);
        if self.broken.is_some() {
            return;
        }
        let all = self.out.take_all();
        let _ = tokio::time::timeout(FLUSH_LIMIT, self.stream.write_all(&all)).await;
    }

    async fn run_inner(&mut self) -> Result<String, Fail> {
        self.start_kex();
        loop {
            if let Some(why) = self.broken {
                return Err(Fail::Broken(why));
            }
            if let Some(reason) = self.tx.ctl.take_disconnect() {
                self.send_disconnect(reason::BY_APPLICATION, &reason).await;
                return Ok(reason);
            }
            self.maybe_rekey();
            let can_read = self.pending() + self.deferred_bytes < READ_STOP;
            let mut can_cmd =
                self.pending() < WRITE_HIGH && self.kex.as_ref().is_none_or(|k| k.sent_newkeys);
            if can_cmd && !self.backlog.is_empty() {
                while self.pending() < WRITE_HIGH {
                    let Some(c) = self.backlog.pop_front() else {
                        break;
                    };
                    self.command(c);
                }
                // Newer commands wait until the backlog is gone.
                can_cmd = self.pending() < WRITE_HIGH && self.backlog.is_empty();
            }
            // Wake for the next keepalive, or to rekey when the time limit
            // passes on an otherwise quiet connection.
            let mut timer = self
                .next_keepalive
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            if self.first_kex_done && self.kex.is_none() {
                timer = timer.min(self.kex_at + self.settings.rekey_time);
            }
            if let Some(t) = self.next_unpin {
                timer = timer.min(t);
            }
            if let Some(k) = &self.kex {
                timer = timer.min(k.started + self.settings.kex_timeout);
            }
            tokio::select! {
                r = self.stream.readable(), if can_read => {
                    r.map_err(Fail::Io)?;
                    self.read_some()?;
                    self.process().await?;
                }
                r = self.stream.writable(), if self.pending() > 0 => {
                    r.map_err(Fail::Io)?;
                    self.write_some()?;
                }
                c = self.cmds.recv(), if can_cmd => {
                    if let Some(c) = c {
                        self.command(c);
                        // Take what else is queued while we are here.
                        while self.pending() < WRITE_HIGH {
                            match self.cmds.try_recv() {
                                Ok(c) => self.command(c),
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = self.tx.ctl.kick.notified() => {}
                _ = tokio::time::sleep_until(timer) => {
                    if self.next_keepalive.is_some_and(|t| t <= Instant::now()) {
                        self.keepalive()?;
                    }
                    if self.next_unpin.is_some_and(|t| t <= Instant::now()) {
                        self.unpin();
                    }
                    if self
                        .kex
                        .as_ref()
                        .is_some_and(|k| k.started.elapsed() >= self.settings.kex_timeout)
                    {
                        return Err(Fail::Protocol(
                            reason::KEY_EXCHANGE_FAILED,
                            format!(
                                "key exchange not finished within {:?}",
                                self.settings.kex_timeout
                            ),
                        ));
                    }
                }
            }
            if self.pending() > 0 {
                self.write_some()?;
                if self.pending() > 0 {
                    self.unpin_later();
                }
            }
        }
    }

    /// Reads what the socket holds, in one system call when it fits. The
    /// read size starts small (an idle connection keeps a small buffer) and
    /// doubles up to [`READ_MAX`] while reads fill it, so bulk transfers take
    /// many packets per call.
    fn read_some(&mut self) -> Result<(), Fail> {
        if self.rbuf.buf.capacity() - self.rbuf.buf.len() < self.read_chunk / 2 {
            self.rbuf.reserve(self.read_chunk);
        }
        let spare = self.rbuf.buf.capacity() - self.rbuf.buf.len();
        match self.stream.try_read_buf(&mut self.rbuf.buf) {
            Ok(0) => Err(Fail::Eof),
            Ok(n) => {
                if n == spare && self.read_chunk < READ_MAX {
                    self.read_chunk *= 2;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(Fail::Io(e)),
        }
    }

    /// Bytes sealed and not yet written to the socket.
    fn pending(&self) -> usize {
        self.out.len()
    }

    fn write_some(&mut self) -> Result<(), Fail> {
        if let Some(why) = self.broken {
            return Err(Fail::Broken(why));
        }
        while !self.out.is_empty() {
            let mut iov = [std::io::IoSlice::new(&[]); outbox::MAX_SLICES];
            let k = self.out.slices(&mut iov);
            match self.stream.try_write_vectored(&iov[..k]) {
                Ok(n) => {
                    self.out.advance(n);
                    self.written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Fail::Io(e)),
            }
        }
        Ok(())
    }

    async fn process(&mut self) -> Result<(), Fail> {
        loop {
            let size = match self.need {
                Some(n) => n,
                None => {
                    let b = &self.rbuf.buf;
                    if b.len() < 4 {
                        break;
                    }
                    let first = [b[0], b[1], b[2], b[3]];
                    let n = self.open.packet_size(self.seq_in, first)?;
                    self.need = Some(n);
                    n
                }
            };
            if self.rbuf.buf.len() < size {
                // Room for the rest of this packet and the next read.
                self.rbuf
                    .reserve((size - self.rbuf.buf.len()).max(self.read_chunk));
                break;
            }
            self.need = None;
            if self.packets_in_key >= self.settings.packets_per_key {
                return Err(proto("sequence number would wrap under one key"));
            }
            let mut packet = self.rbuf.buf.split_to(size);
            let range = self.open.open(self.seq_in, &mut packet)?;
            self.seq_in = self.seq_in.wrapping_add(1);
            self.packets_in_key += 1;
            self.bytes_since_kex += size as u64;
            self.packets_in += 1;
            self.heard = true;
            if range.len() >= FRAME_MIN && packet[range.start] == msg::CHANNEL_DATA {
                packet = match self.data_frame(packet, range.clone())? {
                    None => continue,
                    Some(packet) => packet,
                };
            }
            let payload = packet.freeze().slice(range);
            if payload.is_empty() {
                return Err(proto("empty message"));
            }
            self.handle(payload).await?;
        }
        Ok(())
    }

    /// Takes a big CHANNEL_DATA packet whole (see [`Chunk::Frame`]) outside
    /// a key exchange; hands back any other packet for [`Conn::handle`].
    fn data_frame(
        &mut self,
        packet: BytesMut,
        payload: std::ops::Range<usize>,
    ) -> Result<Option<BytesMut>, Fail> {
        let p = &packet[payload.clone()];
        let in_kex = !self.first_kex_done || self.kex.as_ref().is_some_and(|k| k.neg.is_some());
        let id = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
        let len = u32::from_be_bytes([p[5], p[6], p[7], p[8]]) as usize;
        // Anything unusual takes the common path, with its checks.
        if in_kex || !self.authed || len.checked_add(9) != Some(p.len()) {
            return Ok(Some(packet));
        }
        if let Some(to) = self.data_to(id, len)? {
            to.push(In::Data(Chunk::Frame {
                packet,
                data: payload.start + 9..payload.end,
            }));
            self.unpin_later();
        }
        Ok(None)
    }

    /// Counts `len` bytes of channel data against channel `id`'s window;
    /// returns where they go (nowhere on a session channel, or one we
    /// closed).
    fn data_to(&mut self, id: u32, len: usize) -> Result<Option<&ChanShared>, Fail> {
        let Some(e) = self
            .chans
            .get_mut(&id)
            .filter(|e| matches!(e.kind, ChanKind::Open | ChanKind::Session))
        else {
            return Err(proto("data on a channel that is not open"));
        };
        if len > e.local_max as usize {
            return Err(proto(format!(
                "peer sent {len} bytes in one packet on channel {id}, past the {} announced",
                e.local_max
            )));
        }
        if len as u32 > e.local_window {
            return Err(proto(format!(
                "peer sent {len} bytes past channel {id}'s window"
            )));
        }
        e.local_window -= len as u32;
        if e.kind == ChanKind::Session || e.sent_close {
            return Ok(None);
        }
        Ok(Some(&e.shared))
    }

    /// Makes sure [`Conn::unpin`] runs within [`Settings::unpin_after`].
    fn unpin_later(&mut self) {
        if self.next_unpin.is_none() {
            self.next_unpin = Some(Instant::now() + self.settings.unpin_after);
            // Socket progress counts from here, not from a round long ago.
            self.written_at_unpin = self.written;
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
        let mut again = false;
        for e in self.chans.values() {
            again |= e.shared.unpin_waiting();
        }
        // A closed channel gets nothing new: kept until its data is copied.
        self.closed_waiting
            .retain(|w| w.upgrade().is_some_and(|shared| shared.unpin_waiting()));
        again |= !self.closed_waiting.is_empty();
        if self.pending() > 0 {
            if self.written - self.written_at_unpin < STALLED_BELOW {
                // Commands stay unsealed in the backlog, so the outbox
                // budget (given back as data is sealed) still bounds them.
                while let Ok(mut c) = self.cmds.try_recv() {
                    if let Cmd::Data { data, .. } = &mut c {
                        data.unpin();
                    }
                    self.backlog.push_back(c);
                }
                self.out.unpin();
            }
            again = true;
        }
        self.written_at_unpin = self.written;
        self.next_unpin = again.then(|| Instant::now() + self.settings.unpin_after);
        #[cfg(test)]
        self.tx.ctl.unpins.send_modify(|n| *n += 1);
    }

    // ---- sending ----

    /// Seals `payload` into the write buffer now (kex messages, or any
    /// message outside a key exchange).
    fn seal_now(&mut self, payload: &[u8]) {
        if !self.may_seal() {
            return;
        }
        if !self
            .seal
            .seal(self.seq_out, &payload[..1], &payload[1..], self.out.tail())
        {
            self.broken = Some("sealing a packet failed");
            return;
        }
        self.sealed(payload.len());
    }

    /// Whether one more packet may be sealed under the current keys; if
    /// not, the connection is marked to end (see [`Conn::broken`]).
    fn may_seal(&mut self) -> bool {
        if self.broken.is_none() && self.packets_out_key >= self.settings.packets_per_key {
            self.broken = Some("sequence number would wrap under one key");
        }
        self.broken.is_none()
    }

    /// Counts a packet of `len` payload bytes just sealed.
    fn sealed(&mut self, len: usize) {
        self.seq_out = self.seq_out.wrapping_add(1);
        self.packets_out_key += 1;
        self.bytes_since_kex += len as u64;
    }

    /// Sends a message, holding it back while our key exchange runs.
    fn send(&mut self, payload: Vec<u8>) {
        let blocked = self.kex.as_ref().is_some_and(|k| !k.sent_newkeys);
        if blocked && !msg::is_kex(payload[0]) {
            self.deferred_bytes += payload.len() + DEFERRED_OVERHEAD;
            self.deferred.push_back(payload);
            #[cfg(test)]
            self.tx
                .ctl
                .deferred_peak
                .send_modify(|n| *n = (*n).max(self.deferred_bytes));
        } else {
            self.seal_now(&payload);
        }
    }

    // ---- key exchange ----

    fn start_kex(&mut self) {
        if self.kex.is_some() {
            return;
        }
        let ours = kex::our_kexinit(
            self.server,
            self.session_id.is_none(),
            &self.settings.kex,
            &self.settings.ciphers,
        );
        self.seal_now(&ours);
        self.kex = Some(KexRun {
            ours,
            theirs: None,
            neg: None,
            eph: None,
            next_out: None,
            next_in: None,
            sent_newkeys: false,
            ignore_next: false,
            started: Instant::now(),
        });
    }

    fn maybe_rekey(&mut self) {
        if self.kex.is_none()
            && self.first_kex_done
            && (self.bytes_since_kex >= self.settings.rekey_bytes
                || self.kex_at.elapsed() >= self.settings.rekey_time
                || self.packets_in_key.max(self.packets_out_key)
                    >= self.settings.packets_per_key / 2)
        {
            tracing::debug!(bytes = self.bytes_since_kex, "rekeying");
            self.start_kex();
        }
    }

    fn on_kexinit(&mut self, payload: &[u8]) -> Result<(), Fail> {
        if self.kex.as_ref().is_some_and(|k| k.theirs.is_some()) {
            return Err(proto("unexpected KEXINIT during key exchange"));
        }
        let first = self.session_id.is_none();
        if first && self.packets_in != 1 && self.strict_offered(payload) {
            return Err(proto(
                "strict key exchange: KEXINIT was not the first message",
            ));
        }
        self.start_kex();
        let Some(k) = self.kex.as_mut() else {
            return Err(proto("no key exchange"));
        };
        let theirs = payload.to_vec();
        let (c, s) = if self.server {
            (&theirs, &k.ours)
        } else {
            (&k.ours, &theirs)
        };
        let neg = kex::negotiate(
            &kex::parse_kexinit(c)?,
            &kex::parse_kexinit(s)?,
            self.server,
        )
        .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        if first {
            if self.settings.require_strict_kex && !neg.strict {
                return Err(Fail::Protocol(
                    reason::KEY_EXCHANGE_FAILED,
                    format!(
                        "strict key exchange required: the peer does not offer {}",
                        if self.server {
                            kex::STRICT_C
                        } else {
                            kex::STRICT_S
                        }
                    ),
                ));
            }
            self.strict = neg.strict;
        }
        tracing::debug!(
            kex = %neg.kex.name(),
            client_to_server = %neg.cipher_cs.name(),
            server_to_client = %neg.cipher_sc.name(),
            "negotiated ciphers"
        );
        self.tx.ctl.kex_alg.send_replace(Some(neg.kex.name()));
        k.ignore_next = neg.ignore_guess;
        k.neg = Some(neg);
        k.theirs = Some(theirs);
        if !self.server {
            let (eph, q_c) = ClientKex::new(neg.kex).map_err(proto)?;
            // Q_C, or the hybrid's C_INIT: the same message number and layout.
            let m = Writer::new(msg::KEX_ECDH_INIT).string(&q_c).finish();
            k.eph = Some((eph, q_c));
            self.seal_now(&m);
        }
        Ok(())
    }

    fn strict_offered(&self, peer_kexinit: &[u8]) -> bool {
        let marker = if self.server {
            kex::STRICT_C
        } else {
            kex::STRICT_S
        };
        kex::parse_kexinit(peer_kexinit).is_ok_and(|k| super::wire::list_has(k.kex, marker))
    }

    /// Derives both directions' keys from K and H.
    fn derive_keys(
        &mut self,
        k: &[u8],
        h: &[u8],
        neg: Negotiated,
    ) -> Result<(Direction, Direction), Fail> {
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        // Both are zeroed when dropped, at the end of this closure.
        let make = |alg: CipherAlg, iv_letter: u8, key_letter: u8, seal: bool| {
            let iv = kex::derive(k, h, iv_letter, &sid, alg.iv_len().max(1));
            let key = kex::derive(k, h, key_letter, &sid, alg.key_len());
            Direction::new(alg, &key, &iv, seal).ok_or_else(|| proto("cipher setup failed"))
        };
        let cs_seal = !self.server;
        let cs = make(neg.cipher_cs, b'A', b'C', cs_seal)?;
        let sc = make(neg.cipher_sc, b'B', b'D', !cs_seal)?;
        Ok(if self.server { (sc, cs) } else { (cs, sc) })
    }

    fn on_ecdh_init(&mut self, payload: &[u8]) -> Result<(), Fail> {
        let Side::Server { host_key, .. } = &self.side else {
            return Err(proto("KEX_ECDH_INIT sent to a client"));
        };
        let host_key = host_key.clone();
        let Some(run) = self.kex.as_mut() else {
            return Err(proto("KEX_ECDH_INIT outside key exchange"));
        };
        let (Some(neg), Some(theirs)) = (run.neg, run.theirs.clone()) else {
            return Err(proto("KEX_ECDH_INIT before KEXINIT"));
        };
        if run.sent_newkeys || run.next_in.is_some() {
            return Err(proto("second KEX_ECDH_INIT"));
        }
        let mut r = Reader::new(payload);
        r.u8()?;
        let q_c = r.string()?.to_vec();
        let (q_s, k) = kex::server_kex(neg.kex, &q_c)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        let ours = run.ours.clone();
        let h = kex::exchange_hash(&HashInput {
            v_c: &self.v_c,
            v_s: &self.v_s,
            i_c: &theirs,
            i_s: &ours,
            k_s: host_key.blob(),
            q_c: &q_c,
            q_s: &q_s,
            k: &k,
        });
        let (out, inn) = self.derive_keys(&k, &h, neg)?;
        let reply = Writer::new(msg::KEX_ECDH_REPLY)
            .string(host_key.blob())
            .string(&q_s)
            .string(host_key.sign(&h))
            .finish();
        self.seal_now(&reply);
        if let Some(run) = self.kex.as_mut() {
            run.next_out = Some(out);
            run.next_in = Some(inn);
        }
        self.send_newkeys(neg);
        Ok(())
    }

    fn on_ecdh_reply(&mut self, payload: &[u8]) -> Result<(), Fail> {
        let Some(run) = self.kex.as_mut() else {
            return Err(proto("KEX_ECDH_REPLY outside key exchange"));
        };
        let (Some(neg), Some(theirs), Some((eph, q_c))) =
            (run.neg, run.theirs.clone(), run.eph.take())
        else {
            return Err(proto("unexpected KEX_ECDH_REPLY"));
        };
        let ours = run.ours.clone();
        let mut r = Reader::new(payload);
        r.u8()?;
        let k_s = r.string()?.to_vec();
        let q_s = r.string()?.to_vec();
        let sig = r.string()?.to_vec();
        if let Side::Client { check_host, .. } = &mut self.side
            && !check_host(&k_s)
        {
            return Err(Fail::Protocol(
                reason::HOST_KEY_NOT_VERIFIABLE,
                "host key mismatch".into(),
            ));
        }
        let k = eph
            .finish(&q_s)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        let h = kex::exchange_hash(&HashInput {
            v_c: &self.v_c,
            v_s: &self.v_s,
            i_c: &ours,
            i_s: &theirs,
            k_s: &k_s,
            q_c: &q_c,
            q_s: &q_s,
            k: &k,
        });
        kex::verify_host_signature(&k_s, &sig, &h)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        let (out, inn) = self.derive_keys(&k, &h, neg)?;
        if let Some(run) = self.kex.as_mut() {
            run.next_out = Some(out);
            run.next_in = Some(inn);
        }
        self.send_newkeys(neg);
        Ok(())
    }

    fn send_newkeys(&mut self, neg: Negotiated) {
        self.seal_now(&[msg::NEWKEYS]);
        let first = !self.first_kex_done;
        if let Some(run) = self.kex.as_mut() {
            if let Some(out) = run.next_out.take() {
                self.seal = out;
                self.packets_out_key = 0;
            }
            run.sent_newkeys = true;
        }
        if self.strict {
            self.seq_out = 0;
        }
        if first && self.server && neg.client_ext_info {
            let m = Writer::new(msg::EXT_INFO)
                .u32(1)
                .string("server-sig-algs")
                .string(kex::SERVER_SIG_ALGS)
                .finish();
            self.seal_now(&m);
        }
        if first && !self.server {
            let m = Writer::new(msg::SERVICE_REQUEST)
                .string("ssh-userauth")
                .finish();
            self.seal_now(&m);
        }
        while let Some(m) = self.deferred.pop_front() {
            self.seal_now(&m);
        }
        self.deferred_bytes = 0;
        self.kex_done_if_complete();
    }

    fn on_newkeys(&mut self) -> Result<(), Fail> {
        let Some(run) = self.kex.as_mut() else {
            return Err(proto("NEWKEYS outside key exchange"));
        };
        let Some(inn) = run.next_in.take() else {
            return Err(proto("NEWKEYS before the key exchange finished"));
        };
        self.open = inn;
        self.packets_in_key = 0;
        if self.strict {
            self.seq_in = 0;
        }
        self.first_kex_done = true;
        if let Some(run) = self.kex.as_mut() {
            run.neg = None;
        }
        self.kex_done_if_complete();
        Ok(())
    }

    fn kex_done_if_complete(&mut self) {
        if let Some(run) = &self.kex
            && run.sent_newkeys
            && run.next_in.is_none()
            && run.neg.is_none()
        {
            self.kex = None;
            self.tx.ctl.kexes.send_modify(|n| *n += 1);
            self.bytes_since_kex = 0;
            self.kex_at = Instant::now();
        }
    }

    // ---- messages ----

    async fn handle(&mut self, p: Bytes) -> Result<(), Fail> {
        let t = p[0];
        // During the first key exchange only kex messages are allowed under
        // strict kex (and KEXINIT must come first).
        if !self.first_kex_done {
            let in_kex = matches!(
                t,
                msg::KEXINIT | msg::KEX_ECDH_INIT | msg::KEX_ECDH_REPLY | msg::NEWKEYS
            );
            let known_strict = self.kex.as_ref().is_some_and(|k| k.theirs.is_some()) && self.strict;
            if !in_kex && (known_strict || !msg::is_transport_generic(t)) {
                return Err(proto(format!(
                    "message {t} during the initial key exchange"
                )));
            }
        }
        if let Some(run) = self.kex.as_mut()
            && run.ignore_next
            && matches!(t, msg::KEX_ECDH_INIT | msg::KEX_ECDH_REPLY)
        {
            run.ignore_next = false;
            return Ok(());
        }
        // Once the peer sent KEXINIT it may only send kex messages until NEWKEYS.
        if self.kex.as_ref().is_some_and(|k| k.neg.is_some()) && !msg::is_kex(t) {
            return Err(proto(format!("message {t} during key exchange")));
        }
        match t {
            msg::DISCONNECT => {
                let mut r = Reader::new(&p[1..]);
                r.u32()?;
                let text = String::from_utf8_lossy(r.string()?).into_owned();
                return Err(Fail::Peer(text));
            }
            msg::IGNORE | msg::DEBUG | msg::UNIMPLEMENTED => return Ok(()),
            msg::KEXINIT => return self.on_kexinit(&p),
            msg::KEX_ECDH_INIT => return self.on_ecdh_init(&p),
            msg::KEX_ECDH_REPLY => return self.on_ecdh_reply(&p),
            msg::NEWKEYS => return self.on_newkeys(),
            _ => {}
        }
        if self.server {
            self.handle_server(t, &p).await
        } else {
            self.handle_client(t, &p)
        }
    }

    async fn handle_server(&mut self, t: u8, p: &Bytes) -> Result<(), Fail> {
        match t {
            msg::SERVICE_REQUEST => {
                let mut r = Reader::new(&p[1..]);
                let name = r.utf8()?;
                if name != "ssh-userauth" || self.authed {
                    return Err(proto(format!("service {name:?} not available")));
                }
                let m = Writer::new(msg::SERVICE_ACCEPT).string(name).finish();
                self.send(m);
                self.userauth = true;
                Ok(())
            }
            msg::USERAUTH_REQUEST => {
                if self.authed {
                    return Ok(());
                }
                if !self.userauth {
                    return Err(proto("USERAUTH_REQUEST before SERVICE_REQUEST"));
                }
                self.userauth(&p[1..]).await
            }
            _ if !self.authed => Err(proto(format!("message {t} before authentication"))),
            _ => self.connection_msg(t, p).await,
        }
    }

    async fn userauth(&mut self, body: &[u8]) -> Result<(), Fail> {
        let max = match &self.side {
            Side::Server {
                max_auth_attempts, ..
            } => *max_auth_attempts,
            Side::Client { .. } => return Err(proto("USERAUTH_REQUEST sent to a client")),
        };
        let mut r = Reader::new(body);
        let user = r.utf8()?.to_string();
        let service = r.utf8()?;
        let method = r.utf8()?;
        if service != "ssh-connection" {
            return Err(proto(format!("service {service:?} not available")));
        }
        if method != "publickey" {
            // "none" and anything else: the list of what works. OpenSSH
            // starts with "none"; that first one is free.
            let free = method == "none" && !std::mem::replace(&mut self.probed, true);
            return self.auth_fail(!free, max);
        }
        let signed = r.bool()?;
        let alg = r.utf8()?.to_string();
        let blob = r.string()?;
        let Some(key) = user_key(&alg, blob) else {
            return self.auth_fail(true, max);
        };
        if !signed {
            self.key_queries += 1;
            if self.key_queries > QUERIES_PER_ATTEMPT * max {
                return Err(Fail::Protocol(
                    reason::NO_MORE_AUTH_METHODS,
                    "too many public key queries".into(),
                ));
            }
            if self.events.check_key(&user, &key, false).await {
                let m = Writer::new(msg::USERAUTH_PK_OK)
                    .string(&alg)
                    .string(blob)
                    .finish();
                self.send(m);
                return Ok(());
            }
            return self.auth_fail(true, max);
        }
        let sig = r.string()?;
        let sid = self.session_id.clone().unwrap_or_default();
        let data = Writer::default()
            .string(&sid)
            .u8(msg::USERAUTH_REQUEST)
            .string(&user)
            .string(service)
            .string("publickey")
            .bool(true)
            .string(&alg)
            .string(blob)
            .finish();
        let good = Signature::try_from(sig)
            .ok()
            .filter(|s| s.algorithm().as_str() == alg)
            .is_some_and(|s| Verifier::verify(key.key_data(), &data, &s).is_ok());
        if good && self.events.check_key(&user, &key, true).await {
            self.authed = true;
            self.send(vec![msg::USERAUTH_SUCCESS]);
            self.events.authenticated(self.tx.clone());
            return Ok(());
        }
        self.auth_fail(true, max)
    }

    fn auth_fail(&mut self, counts: bool, max: usize) -> Result<(), Fail> {
        if counts {
            self.auth_failures += 1;
            if self.auth_failures >= max {
                return Err(Fail::Protocol(
                    reason::NO_MORE_AUTH_METHODS,
                    "too many authentication failures".into(),
                ));
            }
        }
        let m = Writer::new(msg::USERAUTH_FAILURE)
            .string("publickey")
            .bool(false)
            .finish();
        self.send(m);
        Ok(())
    }

    fn handle_client(&mut self, t: u8, p: &Bytes) -> Result<(), Fail> {
        match t {
            msg::EXT_INFO => {
                let mut r = Reader::new(&p[1..]);
                let n = r.u32()?;
                for _ in 0..n.min(64) {
                    let name = r.utf8()?;
                    let value = r.utf8()?;
                    if name == "server-sig-algs" {
                        self.server_sig_algs = Some(value.to_string());
                    }
                }
                Ok(())
            }
            msg::SERVICE_ACCEPT if !self.authed => self.send_userauth(),
            msg::USERAUTH_BANNER => Ok(()),
            msg::USERAUTH_SUCCESS if !self.authed => {
                self.authed = true;
                self.events.authenticated(self.tx.clone());
                if let Side::Client { done, .. } = &mut self.side
                    && let Some(done) = done.take()
                {
                    let _ = done.send(Ok(()));
                }
                Ok(())
            }
            msg::USERAUTH_FAILURE if !self.authed => {
                if let Side::Client { done, .. } = &mut self.side
                    && let Some(done) = done.take()
                {
                    let _ = done.send(Err("key refused".into()));
                }
                Err(Fail::Protocol(reason::BY_APPLICATION, "key refused".into()))
            }
            _ if !self.authed => Err(proto(format!("message {t} before authentication"))),
            _ => {
                // Client side: no async events needed for connection messages.
                self.connection_msg_sync(t, p)
            }
        }
    }

    fn send_userauth(&mut self) -> Result<(), Fail> {
        let Side::Client { user, key, .. } = &self.side else {
            return Err(proto("not a client"));
        };
        let (user, key) = (user.clone(), key.clone());
        let blob =
            key.public_key().key_data().encode_vec().map_err(|e| {
                Fail::Protocol(reason::BY_APPLICATION, format!("encoding key: {e}"))
            })?;
        let rsa_hash = match &self.server_sig_algs {
            Some(list) if !super::wire::list_has(list, "rsa-sha2-512") => HashAlg::Sha256,
            _ => HashAlg::Sha512,
        };
        let alg = match key.algorithm() {
            Algorithm::Rsa { .. } => Algorithm::Rsa {
                hash: Some(rsa_hash),
            },
            a => a,
        };
        let alg_name = alg.as_str().to_string();
        let sid = self.session_id.clone().unwrap_or_default();
        let head = Writer::new(msg::USERAUTH_REQUEST)
            .string(&user)
            .string("ssh-connection")
            .string("publickey")
            .bool(true)
            .string(&alg_name)
            .string(&blob)
            .finish();
        let data = Writer::default().string(&sid).raw(&head).finish();
        let sig: Result<Signature, _> = match key.key_data().rsa() {
            Some(rsa) => (rsa, Some(rsa_hash)).try_sign(&data),
            None => key.try_sign(&data),
        };
        let sig =
            sig.map_err(|e| Fail::Protocol(reason::BY_APPLICATION, format!("signing: {e}")))?;
        let sig = sig.encode_vec().map_err(|e| {
            Fail::Protocol(reason::BY_APPLICATION, format!("encoding signature: {e}"))
        })?;
        let m = Writer { buf: head }.string(&sig).finish();
        self.send(m);
        Ok(())
    }

    // ---- connection protocol ----

    async fn connection_msg(&mut self, t: u8, p: &Bytes) -> Result<(), Fail> {
        match t {
            msg::GLOBAL_REQUEST => {
                let mut r = Reader::new(&p[1..]);
                let name = r.utf8()?.to_string();
                let want = r.bool()?;
                let ok = match name.as_str() {
                    "tcpip-forward" | "cancel-tcpip-forward" => {
                        self.events.global_request(&name, r.remaining()).await
                    }
                    _ => false,
                };
                if want {
                    self.send(vec![if ok {
                        msg::REQUEST_SUCCESS
                    } else {
                        msg::REQUEST_FAILURE
                    }]);
                }
                Ok(())
            }
            msg::CHANNEL_REQUEST => {
                let mut r = Reader::new(&p[1..]);
                let id = r.u32()?;
                let kind = r.utf8()?.to_string();
                let want = r.bool()?;
                let Some(e) = self.chans.get(&id) else {
                    return Err(proto("request on unknown channel"));
                };
                let remote = e.remote_id;
                if e.kind == ChanKind::Session && !e.sent_close {
                    match kind.as_str() {
                        "exec" | "shell" => {
                            let command = if kind == "exec" {
                                r.utf8()?.to_string()
                            } else {
                                String::new()
                            };
                            let out: ExecTask = match self.events.exec_task(&command) {
                                Some(task) => task,
                                None => {
                                    Box::pin(std::future::ready(self.events.exec(&command).await))
                                }
                            };
                            if want {
                                self.send(Writer::new(msg::CHANNEL_SUCCESS).u32(remote).finish());
                            }
                            self.exec_reply(id, out);
                            return Ok(());
                        }
                        // Accepted so that a plain `ssh relay` shows the help
                        // text rather than a pty error; no shell ever runs.
                        "pty-req" => {
                            if want {
                                self.send(Writer::new(msg::CHANNEL_SUCCESS).u32(remote).finish());
                            }
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                if want {
                    self.send(Writer::new(msg::CHANNEL_FAILURE).u32(remote).finish());
                }
                Ok(())
            }
            _ => self.connection_msg_sync(t, p),
        }
    }

    /// Sends a command's output, once ready, like any channel data (within
    /// the peer's window), then its exit status, EOF and close.
    fn exec_reply(&mut self, id: u32, out: ExecTask) {
        let Some(e) = self.chans.get_mut(&id) else {
            return;
        };
        e.kind = ChanKind::Open;
        let handle = ChanHandle::new(id, e.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            let out = out.await;
            let ok = handle.send(Bytes::from(out.stdout), false).await.is_ok()
                && handle.send(Bytes::from(out.stderr), true).await.is_ok();
            if ok {
                handle.tx.send(Cmd::ExitStatus {
                    id,
                    status: out.status,
                });
                handle.eof();
            }
            // Dropping the handle closes the channel.
        });
    }

    fn connection_msg_sync(&mut self, t: u8, p: &Bytes) -> Result<(), Fail> {
        let mut r = Reader::new(&p[1..]);
        match t {
            msg::GLOBAL_REQUEST => {
                r.utf8()?;
                if r.bool()? {
                    self.send(vec![msg::REQUEST_FAILURE]);
                }
            }
            msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE => match self.pending_globals.pop_front() {
                Some(Some(reply)) => {
                    let _ = reply.send(t == msg::REQUEST_SUCCESS);
                }
                Some(None) => {}
                None => return Err(proto("reply to a request never sent")),
            },
            msg::CHANNEL_OPEN => self.on_channel_open(&mut r)?,
            msg::CHANNEL_OPEN_CONFIRMATION => {
                let id = r.u32()?;
                let (remote, window, max) = (r.u32()?, r.u32()?, r.u32()?);
                let e = self
                    .chans
                    .get_mut(&id)
                    .filter(|e| e.kind == ChanKind::Opening);
                let Some(e) = e else {
                    return Err(proto("confirmation for a channel never opened"));
                };
                e.remote_id = remote;
                e.kind = ChanKind::Open;
                if max < MIN_PEER_PACKET {
                    if let Some(reply) = e.reply.take() {
                        let _ = reply.send(Err(format!(
                            "peer's maximum packet size {max} is below {MIN_PEER_PACKET}"
                        )));
                    }
                    self.command(Cmd::Close(id));
                    return Ok(());
                }
                e.shared.set_remote(window, max);
                let shared = e.shared.clone();
                if let Some(reply) = e.reply.take()
                    && reply.send(Ok((id, shared))).is_err()
                {
                    // The opener gave up: close what it will never use.
                    self.command(Cmd::Close(id));
                }
            }
            msg::CHANNEL_OPEN_FAILURE => {
                let id = r.u32()?;
                let code = r.u32()?;
                let text = String::from_utf8_lossy(r.string()?).into_owned();
                match self.chans.remove(&id) {
                    Some(e) if e.kind == ChanKind::Opening => {
                        if let Some(reply) = e.reply {
                            let text = if text.is_empty() {
                                format!("refused (code {code})")
                            } else {
                                text
                            };
                            let _ = reply.send(Err(text));
                        }
                    }
                    _ => return Err(proto("open failure for a channel never opened")),
                }
            }
            msg::CHANNEL_WINDOW_ADJUST => {
                let id = r.u32()?;
                let n = r.u32()?;
                if let Some(e) = self.chans.get(&id)
                    && !e.shared.add_window(n)
                {
                    return Err(proto("window adjust overflows the window"));
                }
            }
            msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
                let id = r.u32()?;
                let ext = t == msg::CHANNEL_EXTENDED_DATA;
                if ext {
                    r.u32()?;
                }
                let data = r.string()?;
                let offset = data.as_ptr() as usize - p.as_ptr() as usize;
                let len = data.len();
                let Some(to) = self.data_to(id, len)? else {
                    return Ok(());
                };
                // Big chunks keep pointing into the packet; small ones are
                // copied so that they do not pin a whole read buffer.
                let big = len >= FRAME_MIN - 9;
                let bytes = if big {
                    p.slice(offset..offset + len)
                } else {
                    Bytes::copy_from_slice(&p[offset..offset + len])
                };
                to.push(if ext {
                    In::Ext(bytes)
                } else {
                    In::Data(bytes.into())
                });
                if big {
                    self.unpin_later();
                }
            }
            msg::CHANNEL_EOF => {
                let id = r.u32()?;
                // Once per channel: repeats would queue without bound where
                // nobody reads (a session channel, or one we closed).
                if let Some(e) = self.chans.get_mut(&id) {
                    if std::mem::replace(&mut e.got_eof, true) {
                        return Err(proto(format!("second CHANNEL_EOF on channel {id}")));
                    }
                    if e.kind != ChanKind::Session && !e.sent_close {
                        e.shared.push(In::Eof);
                    }
                }
            }
            msg::CHANNEL_CLOSE => {
                let id = r.u32()?;
                let Some(e) = self.chans.remove(&id) else {
                    return Err(proto("close of an unknown channel"));
                };
                e.shared.close();
                if e.shared.has_queued() {
                    self.closed_waiting.push(Arc::downgrade(&e.shared));
                    self.unpin_later();
                }
                if !e.sent_close {
                    self.send(Writer::new(msg::CHANNEL_CLOSE).u32(e.remote_id).finish());
                }
            }
            msg::CHANNEL_REQUEST => {
                let id = r.u32()?;
                let kind = r.utf8()?;
                let want = r.bool()?;
                let Some(e) = self.chans.get_mut(&id) else {
                    return Err(proto("request on unknown channel"));
                };
                if kind == "exit-status" || kind == "exit-signal" {
                    if std::mem::replace(&mut e.got_exit, true) {
                        return Err(proto(format!("second exit status on channel {id}")));
                    }
                    if kind == "exit-status" && !e.sent_close {
                        e.shared.push(In::ExitStatus(r.u32()?));
                    }
                }
                if want {
                    let m = Writer::new(msg::CHANNEL_FAILURE).u32(e.remote_id).finish();
                    self.send(m);
                }
            }
            msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE => {}
            _ => {
                let seq = self.seq_in.wrapping_sub(1);
                self.send(Writer::new(msg::UNIMPLEMENTED).u32(seq).finish());
            }
        }
        Ok(())
    }

    fn alloc_id(&mut self) -> Option<u32> {
        if self.chans.len() >= MAX_CHANNELS {
            return None;
        }
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.chans.contains_key(&id) {
                return Some(id);
            }
        }
    }

    fn on_channel_open(&mut self, r: &mut Reader) -> Result<(), Fail> {
        let kind = r.utf8()?.to_string();
        let remote = r.u32()?;
        let window = r.u32()?;
        let max = r.u32()?;
        let refuse = |code: u32, text: &str| {
            Writer::new(msg::CHANNEL_OPEN_FAILURE)
                .u32(remote)
                .u32(code)
                .string(text)
                .string("")
                .finish()
        };
        let request = match (kind.as_str(), self.server) {
            ("session", true) => None,
            ("direct-tcpip", true) => Some(OpenRequest::DirectTcpip {
                host: r.utf8()?.to_string(),
                port: r.u32()?,
            }),
            ("forwarded-tcpip", false) => Some(OpenRequest::ForwardedTcpip {
                address: r.utf8()?.to_string(),
                port: r.u32()?,
            }),
            _ => {
                self.send(refuse(3, "unknown channel type"));
                return Ok(());
            }
        };
        if max < MIN_PEER_PACKET {
            self.send(refuse(
                1,
                &format!("maximum packet size {max} is below {MIN_PEER_PACKET}"),
            ));
            return Ok(());
        }
        let Some(id) = self.alloc_id() else {
            self.send(refuse(4, "too many channels"));
            return Ok(());
        };
        let shared = ChanShared::new(window, max);
        let kind = if request.is_some() {
            ChanKind::Incoming
        } else {
            ChanKind::Session
        };
        self.chans.insert(
            id,
            Entry {
                shared: shared.clone(),
                remote_id: remote,
                kind,
                reply: None,
                local_window: WINDOW,
                local_max: MAX_PACKET_SIZE,
                sent_eof: false,
                sent_close: false,
                got_eof: false,
                got_exit: false,
            },
        );
        match request {
            None => {
                let m = Writer::new(msg::CHANNEL_OPEN_CONFIRMATION)
                    .u32(remote)
                    .u32(id)
                    .u32(WINDOW)
                    .u32(MAX_PACKET_SIZE)
                    .finish();
                self.send(m);
            }
            Some(req) => {
                let handle = ChanHandle::new(id, shared, self.tx.clone());
                self.events.channel_open(req, Incoming { handle });
            }
        }
        Ok(())
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Data { id, ext, data } => {
                let n = data.len();
                if self.may_seal()
                    && let Some(e) = self.chans.get(&id)
                    && e.kind == ChanKind::Open
                    && !e.sent_eof
                    && !e.sent_close
                {
                    let mut head = [0u8; 13];
                    let rid = e.remote_id.to_be_bytes();
                    let len = (n as u32).to_be_bytes();
                    let head: &[u8] = if ext {
                        head[0] = msg::CHANNEL_EXTENDED_DATA;
                        head[1..5].copy_from_slice(&rid);
                        head[5..9].copy_from_slice(&1u32.to_be_bytes());
                        head[9..13].copy_from_slice(&len);
                        &head[..13]
                    } else {
                        head[0] = msg::CHANNEL_DATA;
                        head[1..5].copy_from_slice(&rid);
                        head[5..9].copy_from_slice(&len);
                        &head[..9]
                    };
                    let framed = match data {
                        Chunk::Frame {
                            mut packet,
                            data: range,
                        } if !ext => {
                            let ok = self.seal.seal_frame(
                                self.seq_out,
                                head,
                                &mut packet,
                                range.clone(),
                            );
                            if ok {
                                self.out.push_frame(packet.freeze());
                                None
                            } else {
                                Some(Chunk::Frame {
                                    packet,
                                    data: range,
                                })
                            }
                        }
                        other => Some(other),
                    };
                    let sealed = match framed {
                        Some(data) => self.seal.seal(self.seq_out, head, &data, self.out.tail()),
                        None => true,
                    };
                    if sealed {
                        self.sealed(n);
                    } else {
                        self.broken = Some("sealing a packet failed");
                    }
                }
                self.tx.space.add_permits(n);
            }
            Cmd::Adjust { id, n } => {
                if let Some(e) = self.chans.get_mut(&id)
                    && e.kind == ChanKind::Open
                    && !e.sent_close
                {
                    e.local_window = e.local_window.saturating_add(n);
                    let m = Writer::new(msg::CHANNEL_WINDOW_ADJUST)
                        .u32(e.remote_id)
                        .u32(n)
                        .finish();
                    self.send(m);
                }
            }
            Cmd::Eof(id) => {
                if let Some(e) = self.chans.get_mut(&id)
                    && e.kind == ChanKind::Open
                    && !e.sent_eof
                    && !e.sent_close
                {
                    e.sent_eof = true;
                    let m = Writer::new(msg::CHANNEL_EOF).u32(e.remote_id).finish();
                    self.send(m);
                }
            }
            Cmd::Close(id) => {
                let Some(e) = self.chans.get_mut(&id) else {
                    return;
                };
                match e.kind {
                    ChanKind::Incoming => self.command(Cmd::Refuse {
                        id,
                        code: 1,
                        text: "refused".into(),
                    }),
                    ChanKind::Open | ChanKind::Session if !e.sent_close => {
                        e.sent_close = true;
                        let m = Writer::new(msg::CHANNEL_CLOSE).u32(e.remote_id).finish();
                        self.send(m);
                    }
                    _ => {}
                }
            }
            Cmd::Confirm(id) => {
                if let Some(e) = self.chans.get_mut(&id)
                    && e.kind == ChanKind::Incoming
                {
                    e.kind = ChanKind::Open;
                    let m = Writer::new(msg::CHANNEL_OPEN_CONFIRMATION)
                        .u32(e.remote_id)
                        .u32(id)
                        .u32(WINDOW)
                        .u32(MAX_PACKET_SIZE)
                        .finish();
                    self.send(m);
                }
            }
            Cmd::Refuse { id, code, text } => {
                if self
                    .chans
                    .get(&id)
                    .is_some_and(|e| e.kind == ChanKind::Incoming)
                    && let Some(e) = self.chans.remove(&id)
                {
                    e.shared.close();
                    let m = Writer::new(msg::CHANNEL_OPEN_FAILURE)
                        .u32(e.remote_id)
                        .u32(code)
                        .string(&text)
                        .string("")
                        .finish();
                    self.send(m);
                }
            }
            Cmd::Open {
                kind,
                extra,
                max_packet,
                reply,
            } => {
                let Some(id) = self.alloc_id() else {
                    let _ = reply.send(Err("too many channels".into()));
                    return;
                };
                let max_packet = max_packet.min(MAX_PACKET_SIZE);
                self.chans.insert(
                    id,
                    Entry {
                        shared: ChanShared::new(0, 0),
                        remote_id: 0,
                        kind: ChanKind::Opening,
                        reply: Some(reply),
                        local_window: WINDOW,
                        local_max: max_packet,
                        sent_eof: false,
                        sent_close: false,
                        got_eof: false,
                        got_exit: false,
                    },
                );
                let m = Writer::new(msg::CHANNEL_OPEN)
                    .string(kind)
                    .u32(id)
                    .u32(WINDOW)
                    .u32(max_packet)
                    .raw(&extra)
                    .finish();
                self.send(m);
            }
            Cmd::Exec { id, command } => {
                if let Some(e) = self.chans.get(&id)
                    && e.kind == ChanKind::Open
                {
                    let m = Writer::new(msg::CHANNEL_REQUEST)
                        .u32(e.remote_id)
                        .string("exec")
                        .bool(false)
                        .string(&command)
                        .finish();
                    self.send(m);
                }
            }
            Cmd::ExitStatus { id, status } => {
                if let Some(e) = self.chans.get(&id)
                    && !e.sent_close
                {
                    let m = Writer::new(msg::CHANNEL_REQUEST)
                        .u32(e.remote_id)
                        .string("exit-status")
                        .bool(false)
                        .u32(status)
                        .finish();
                    self.send(m);
                }
            }
            Cmd::Global { name, data, reply } => {
                let m = Writer::new(msg::GLOBAL_REQUEST)
                    .string(&name)
                    .bool(true)
                    .raw(&data)
                    .finish();
                self.pending_globals.push_back(Some(reply));
                self.send(m);
            }
        }
    }

    fn keepalive(&mut self) -> Result<(), Fail> {
        // Idle connections keep no buffers (a busy one reuses them).
        self.out.release_if_empty();
        self.rbuf.release_if_empty();
        let Some((interval, max)) = self.settings.keepalive else {
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
        if self.authed {
            let m = Writer::new(msg::GLOBAL_REQUEST)
                .string("keepalive@openssh.com")
                .bool(true)
                .finish();
            self.pending_globals.push_back(None);
            self.send(m);
        }
        Ok(())
    }
}

/// Parses a user key blob offered with algorithm `alg`; `None` for key types
/// or algorithm names Warren does not accept (certificates, ssh-rsa with
/// SHA-1, security keys, DSA).
pub fn user_key(alg: &str, blob: &[u8]) -> Option<PublicKey> {
    let key = PublicKey::from_bytes(blob).ok()?;
    let ok = match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => key.algorithm().as_str() == alg,
        Algorithm::Rsa { .. } => alg == "rsa-sha2-256" || alg == "rsa-sha2-512",
        _ => false,
    };
    ok.then_some(key)
}

/// Decodes any message by the field layout the connection task reads for
/// its type (for fuzzing the layouts; the task itself reads fields inline).
pub fn parse_any(p: &[u8]) {
    let Some((&t, body)) = p.split_first() else {
        return;
    };
    let mut r = Reader::new(body);
    let _ = (|| -> Result<(), WireError> {
        match t {
            msg::DISCONNECT => {
                r.u32()?;
                r.string()?;
            }
            msg::SERVICE_REQUEST | msg::SERVICE_ACCEPT => {
                r.utf8()?;
            }
            msg::EXT_INFO => {
                let n = r.u32()?;
                for _ in 0..n.min(64) {
                    r.utf8()?;
                    r.utf8()?;
                }
            }
            msg::KEX_ECDH_INIT => {
                r.string()?;
            }
            msg::KEX_ECDH_REPLY => {
                r.string()?;
                r.string()?;
                r.string()?;
            }
            msg::USERAUTH_REQUEST => {
                r.utf8()?;
                r.utf8()?;
                if r.utf8()? == "publickey" {
                    let signed = r.bool()?;
                    let alg = r.utf8()?;
                    let blob = r.string()?;
                    let _ = user_key(alg, blob);
                    if signed {
                        let _ = Signature::try_from(r.string()?);
                    }
                }
            }
            msg::GLOBAL_REQUEST => {
                r.utf8()?;
                r.bool()?;
                r.utf8()?;
                r.u32()?;
            }
            msg::CHANNEL_OPEN => {
                r.utf8()?;
                r.u32()?;
                r.u32()?;
                r.u32()?;
                r.utf8()?;
                r.u32()?;
            }
            msg::CHANNEL_OPEN_CONFIRMATION => {
                r.u32()?;
                r.u32()?;
                r.u32()?;
                r.u32()?;
            }
            msg::CHANNEL_OPEN_FAILURE => {
                r.u32()?;
                r.u32()?;
                r.string()?;
            }
            msg::CHANNEL_WINDOW_ADJUST => {
                r.u32()?;
                r.u32()?;
            }
            msg::CHANNEL_DATA => {
                r.u32()?;
                r.string()?;
            }
            msg::CHANNEL_EXTENDED_DATA => {
                r.u32()?;
                r.u32()?;
                r.string()?;
            }
            msg::CHANNEL_REQUEST => {
                r.u32()?;
                let kind = r.utf8()?;
                r.bool()?;
                match kind {
                    "exec" => {
                        r.utf8()?;
                    }
                    "exit-status" => {
                        r.u32()?;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    })();
}

#[cfg(test)]
mod seal_tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::ssh::proto::mux::ChanHandle;

    /// Refuses everything; the connection under test never gets that far.
    struct Nothing;

    impl Events for Nothing {
        async fn check_key(&mut self, _: &str, _: &PublicKey, _: bool) -> bool {
            false
        }
        fn authenticated(&mut self, _: ConnTx) {}
        async fn global_request(&mut self, _: &str, _: &[u8]) -> bool {
            false
        }
        fn channel_open(&mut self, _: OpenRequest, incoming: Incoming) {
            incoming.refuse(1, "no");
        }
        async fn exec(&mut self, _: &str) -> ExecOutput {
            ExecOutput::default()
        }
    }

    /// A server connection whose sealing keys cannot seal (keys made for
    /// opening), and the other end of its socket.
    async fn broken_conn() -> (Conn<Nothing>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let side = Side::Server {
            host_key: Arc::new(kex::HostKey::from_seed(&[3u8; 32]).unwrap()),
            max_auth_attempts: 6,
        };
        let (mut c, _tx) = Conn::new(s, b"SSH-2.0-x".to_vec(), side, Settings::default(), Nothing);
        c.seal = Direction::cannot_seal();
        (c, peer)
    }

    #[tokio::test]
    async fn a_seal_that_fails_ends_the_connection_and_sends_nothing() {
        // A message: nothing goes out, and the connection ends at once,
        // without a DISCONNECT it could not seal either.
        let (c, mut peer) = broken_conn().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), c.run())
            .await
            .unwrap();
        assert!(
            matches!(&ended, Ended::Local(t) if t.contains("sealing a packet failed")),
            "{ended:?}"
        );
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{} bytes sent without a tag", got.len());

        // Channel data: the same.
        let (mut c, _peer) = broken_conn().await;
        let shared = ChanShared::new(1 << 20, 32768);
        c.chans.insert(
            0,
            Entry {
                shared: shared.clone(),
                remote_id: 0,
                kind: ChanKind::Open,
                reply: None,
                local_window: WINDOW,
                local_max: MAX_PACKET_SIZE,
                sent_eof: false,
                sent_close: false,
                got_eof: false,
                got_exit: false,
            },
        );
        let _h = ChanHandle::new(0, shared, c.tx.clone());
        c.command(Cmd::Data {
            id: 0,
            ext: false,
            data: Bytes::from_static(b"secret").into(),
        });
        assert!(c.out.is_empty(), "channel data queued without a tag");
        assert!(matches!(c.write_some(), Err(Fail::Broken(_))));
    }
}
