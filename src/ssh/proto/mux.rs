//! State shared between the connection task and the handles that
//! applications hold: per-channel buffers and windows, and the command queue
//! into the connection task.
//!
//! Flow control (RFC 4254 §5.2): a channel's receive buffer is its window.
//! The connection task appends what arrives (the peer cannot send more than
//! the window, or the connection ends), and grants more window only when the
//! application has taken bytes out ([`ChanHandle::recv`]). Writing waits for
//! the peer's window of that channel alone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::ops::{Deref, Range};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, Semaphore, oneshot, watch};

pub use counts::{DataCounts, data_counts};
pub use direct::{Charge, Direct, DirectSink, PaceHold, Pushed, Wakes};

/// Window we give each channel: at most this many received bytes wait in
/// memory for a slow reader.
pub const WINDOW: u32 = 2 * 1024 * 1024;
/// Window is granted back once the reader took this much.
pub const GRANT_AT: u32 = WINDOW / 8;
/// Largest data packet we send; peers announce their own limit (OpenSSH
/// 32 KiB, Warren 64 KiB) and the smaller one applies.
pub const SEND_PACKET: u32 = 64 * 1024;
/// Bytes of channel data queued towards one connection's socket.
pub const OUTBOX: usize = 512 * 1024;
/// Received data that has waited about this long (in a channel's queue, in
/// a writer's hand, or towards a socket that stopped taking it) is copied
/// into a buffer of its own. Until then it points into the read buffer it
/// arrived in (see [`Chunk::Frame`]), and keeps all of that buffer (640 KiB)
/// alive: a stalled reader would hold 80 times what it was sent.
pub const UNPIN_AFTER: Duration = Duration::from_secs(2);

static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// Created by the first [`buffered_at_least`] caller; until then a change
/// costs one atomic load.
static BUFFERED_WATCH: std::sync::OnceLock<watch::Sender<()>> = std::sync::OnceLock::new();

/// Bytes received on channels of every connection of this process and not
/// yet read by the application. For tests and diagnostics.
pub fn buffered_bytes() -> usize {
    BUFFERED.load(Ordering::Relaxed)
}

/// Waits until [`buffered_bytes`] reaches `n` (for tests: "the windows
/// along a stalled stream are full").
pub async fn buffered_at_least(n: usize) {
    let mut rx = BUFFERED_WATCH
        .get_or_init(|| watch::Sender::new(()))
        .subscribe();
    while buffered_bytes() < n {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn buffered_add(n: usize) {
    BUFFERED.fetch_add(n, Ordering::Relaxed);
    if let Some(w) = BUFFERED_WATCH.get() {
        w.send_replace(());
    }
}

/// Channel data as it arrived.
#[derive(Debug)]
pub enum Chunk {
    Bytes(Bytes),
    /// Data that came alone in a packet, with that whole decrypted packet
    /// around it (header before, padding and tag after). A relay forwards it
    /// by sealing it again in place for the next hop
    /// ([`super::packet::Direction::seal_frame`]) instead of copying it.
    Frame {
        packet: BytesMut,
        data: Range<usize>,
    },
}

impl Chunk {
    /// Gives the data a buffer of its own (see [`UNPIN_AFTER`]), unless it
    /// has one.
    pub fn unpin(&mut self) {
        if self.is_pinned() {
            *self = Chunk::Bytes(Bytes::copy_from_slice(self));
        }
    }

    /// Whether the data shares its buffer (with the rest of a read buffer).
    pub fn is_pinned(&self) -> bool {
        match self {
            Chunk::Bytes(b) => !b.is_unique(),
            Chunk::Frame { .. } => true,
        }
    }

    /// The data as shared bytes (no copy).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Chunk::Bytes(b) => b,
            Chunk::Frame { packet, data } => packet.freeze().slice(data),
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => b,
            Chunk::Frame { packet, data } => &packet[data.clone()],
        }
    }
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Chunk {
        Chunk::Bytes(b)
    }
}

/// What a reader takes from a channel.
#[derive(Debug)]
pub enum In {
    Data(Chunk),
    /// Extended data (stderr of an exec).
    Ext(Bytes),
    Eof,
    ExitStatus(u32),
}

impl In {
    fn unpin(&mut self) {
        match self {
            In::Data(c) => c.unpin(),
            In::Ext(b) if !b.is_unique() => *b = Bytes::copy_from_slice(b),
            _ => {}
        }
    }

    fn is_pinned(&self) -> bool {
        match self {
            In::Data(c) => c.is_pinned(),
            In::Ext(b) => !b.is_unique(),
            In::Eof | In::ExitStatus(_) => false,
        }
    }

    fn data_len(&self) -> Option<usize> {
        match self {
            In::Data(c) => Some(c.len()),
            In::Ext(b) => Some(b.len()),
            _ => None,
        }
    }
}

pub struct ChanState {
    queue: VecDeque<In>,
    queued: usize,
    /// The first `aged` entries of `queue` were there at the last
    /// [`ChanShared::unpin_waiting`]; the first `owned` have been copied.
    aged: usize,
    owned: usize,
    /// Read by the application, not yet granted back to the peer.
    consumed: u32,
    /// The peer closed the channel or the connection ended.
    pub closed: bool,
    /// What the peer still lets us send, and its largest packet.
    pub remote_window: u32,
    pub remote_max: u32,
    /// The reader waits in [`ChanHandle::recv`] with nothing in hand.
    reader_waiting: bool,
    /// Where data may go without the reader (see [`direct`]).
    direct: Option<Arc<Direct>>,
    /// The pace's wait for the data queued last, already charged.
    pace_hold: Option<PaceHold>,
}

pub struct ChanShared {
    st: Mutex<ChanState>,
    rx: Notify,
    tx: Notify,
}

impl ChanShared {
    pub fn new(remote_window: u32, remote_max: u32) -> Arc<ChanShared> {
        Arc::new(ChanShared {
            st: Mutex::new(ChanState {
                queue: VecDeque::new(),
                queued: 0,
                aged: 0,
                owned: 0,
                consumed: 0,
                closed: false,
                remote_window,
                remote_max,
                reader_waiting: false,
                direct: None,
                pace_hold: None,
            }),
            rx: Notify::new(),
            tx: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection side: something arrived.
    pub fn push(&self, m: In) {
        let mut st = self.lock();
        if let Some(n) = m.data_len() {
            st.queued += n;
            buffered_add(n);
        }
        st.queue.push_back(m);
        drop(st);
        self.rx.notify_one();
    }

    /// Connection side, every [`UNPIN_AFTER`] while data waits: what was
    /// already queued at the last call and still is gets a buffer of its
    /// own. Returns whether queued data may still point into a read buffer.
    pub fn unpin_waiting(&self) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        let (owned, aged) = (st.owned, st.aged);
        for m in st.queue.iter_mut().take(aged).skip(owned) {
            m.unpin();
        }
        st.owned = owned.max(aged);
        st.aged = st.queue.len();
        st.aged > st.owned
    }

    /// Connection side, when the connection lets go of the channel (it was
    /// closed, or the connection ended) while data still waits: copies it
    /// all now, as no later round will. Returns whether anything was copied.
    pub fn unpin_all(&self) -> bool {
        let mut st = self.lock();
        let mut any = false;
        for m in st.queue.iter_mut().filter(|m| m.is_pinned()) {
            m.unpin();
            any = true;
        }
        any
    }

    /// Whether queued data waits (so [`ChanShared::unpin_waiting`] has work
    /// to come).
    pub fn has_queued(&self) -> bool {
        self.lock().queued > 0
    }

    /// Data entries queued that still share their buffer (for tests).
    #[cfg(test)]
    pub fn pinned(&self) -> usize {
        self.lock().queue.iter().filter(|m| m.is_pinned()).count()
    }

    /// Connection side: the peer added window.
    pub fn add_window(&self, n: u32) -> bool {
        let mut st = self.lock();
        match st.remote_window.checked_add(n) {
            Some(w) => st.remote_window = w,
            None => return false,
        }
        drop(st);
        self.tx.notify_one();
        true
    }

    pub fn set_remote(&self, window: u32, max: u32) {
        let mut st = self.lock();
        st.remote_window = window;
        st.remote_max = max;
    }

    /// Connection side: the peer closed, or the connection is gone.
    pub fn close(&self) {
        self.lock().closed = true;
        self.rx.notify_one();
        self.tx.notify_one();
    }
}

impl Drop for ChanShared {
    fn drop(&mut self) {
        let st = self.lock();
        BUFFERED.fetch_sub(st.queued, Ordering::Relaxed);
    }
}

/// A channel that was asked to open by the peer.
#[derive(Debug)]
pub enum OpenRequest {
    DirectTcpip {
        host: String,
        port: u32,
    },
    ForwardedTcpip {
        address: String,
        port: u32,
    },
    /// Signalling for a direct path (`crate::p2p::CHANNEL_TYPE`).
    P2p {
        host: String,
        port: u32,
    },
}

pub type OpenReply = oneshot::Sender<Result<(u32, Arc<ChanShared>), OpenRefused>>;

/// Why a channel we asked for did not open: the peer's refusal, with its
/// reason code ([`super::wire::open_failure`]), or none when the
/// connection closed (or the peer's packet size was unusable) first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct OpenRefused {
    pub code: Option<u32>,
    pub text: String,
}

impl OpenRefused {
    pub(crate) fn ours(text: impl Into<String>) -> OpenRefused {
        OpenRefused {
            code: None,
            text: text.into(),
        }
    }
}

/// Requests from handles to the connection task.
pub enum Cmd {
    Data {
        id: u32,
        ext: bool,
        data: Chunk,
    },
    Adjust {
        id: u32,
        n: u32,
    },
    Eof(u32),
    Close(u32),
    Confirm(u32),
    Refuse {
        id: u32,
        code: u32,
        text: String,
    },
    Open {
        kind: &'static str,
        extra: Vec<u8>,
        /// Largest data packet we ask the peer to send on this channel.
        max_packet: u32,
        reply: OpenReply,
    },
    Exec {
        id: u32,
        command: String,
    },
    ExitStatus {
        id: u32,
        status: u32,
    },
    Global {
        name: String,
        data: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// The peer sent DISCONNECT with this text.
    PeerSaid(String),
    /// The socket closed without a DISCONNECT.
    Closed,
    /// We ended it (protocol error, timeout, or the application asked).
    Local(String),
}

/// Control shared by all handles of one connection.
pub struct Ctl {
    disconnect: Mutex<Option<String>>,
    pub kick: Notify,
    pub ended: watch::Sender<Option<Ended>>,
    /// Key exchanges completed (the first one and every rekey).
    pub kexes: watch::Sender<u32>,
    /// The key exchange negotiated last (its SSH name), once known.
    pub kex_alg: watch::Sender<Option<&'static str>>,
    /// See [`UNPIN_AFTER`] (tests shorten it).
    pub unpin_after: Duration,
    /// The tenant's fair share of the workers, once the application set
    /// it (see [`crate::ssh::fair`]); bulk work takes turns in it.
    pub share: std::sync::OnceLock<crate::ssh::fair::Share>,
    /// Rounds of the connection's unpinning (for tests).
    #[cfg(test)]
    pub unpins: watch::Sender<u32>,
    /// Most bytes (with overhead) held back during a key exchange at once
    /// (for tests).
    #[cfg(test)]
    pub deferred_peak: watch::Sender<usize>,
}

impl Ctl {
    #[cfg(test)]
    pub fn new() -> Arc<Ctl> {
        Ctl::with_unpin_after(UNPIN_AFTER)
    }

    pub fn with_unpin_after(unpin_after: Duration) -> Arc<Ctl> {
        Arc::new(Ctl {
            disconnect: Mutex::new(None),
            kick: Notify::new(),
            ended: watch::Sender::new(None),
            kexes: watch::Sender::new(0),
            kex_alg: watch::Sender::new(None),
            unpin_after,
            share: std::sync::OnceLock::new(),
            #[cfg(test)]
            unpins: watch::Sender::new(0),
            #[cfg(test)]
            deferred_peak: watch::Sender::new(0),
        })
    }

    pub fn take_disconnect(&self) -> Option<String> {
        self.disconnect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Asks the connection to send DISCONNECT and close, without waiting.
    pub fn request_disconnect(&self, reason: &str) {
        if self.is_ended() {
            return;
        }
        *self.disconnect.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        self.kick.notify_one();
    }

    /// Asks the connection to send DISCONNECT and close; returns when it has.
    pub async fn disconnect(&self, reason: &str) {
        self.request_disconnect(reason);
        self.wait_ended().await;
    }

    pub async fn wait_ended(&self) -> Ended {
        let mut rx = self.ended.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Ended::Closed;
            }
        }
    }
}

/// The way into one connection's task.
#[derive(Clone)]
pub struct ConnTx {
    pub cmds: super::queue::CmdTx,
    /// Bytes of channel data that may be queued towards the socket.
    pub space: Arc<Semaphore>,
    pub ctl: Arc<Ctl>,
}

impl ConnTx {
    pub fn send(&self, c: Cmd) -> bool {
        self.cmds.send(c).is_ok()
    }

    /// Opens a channel of `kind`; `extra` is the type-specific data; the
    /// peer may send packets of up to `max_packet` bytes of data on it.
    pub async fn open(
        &self,
        kind: &'static str,
        extra: Vec<u8>,
        max_packet: u32,
    ) -> Result<ChanHandle, OpenRefused> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Cmd::Open {
            kind,
            extra,
            max_packet,
            reply,
        }) {
            return Err(OpenRefused::ours("connection closed"));
        }
        match rx.await {
            Ok(Ok((id, shared))) => Ok(ChanHandle::new(id, shared, self.clone())),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(OpenRefused::ours("connection closed")),
        }
    }

    pub async fn global(&self, name: &str, data: Vec<u8>) -> Option<bool> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Cmd::Global {
            name: name.to_string(),
            data,
            reply,
        }) {
            return None;
        }
        rx.await.ok()
    }
}

/// An application's end of one channel. Dropping it closes the channel.
pub struct ChanHandle {
    pub id: u32,
    shared: Arc<ChanShared>,
    pub tx: ConnTx,
}

impl ChanHandle {
    pub fn new(id: u32, shared: Arc<ChanShared>, tx: ConnTx) -> ChanHandle {
        ChanHandle { id, shared, tx }
    }

    /// Received data entries that still point into their read buffer (for
    /// tests).
    #[cfg(test)]
    pub fn pinned(&self) -> usize {
        self.shared.pinned()
    }

    /// Whether the peer closed the channel (for tests).
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Received bytes not yet read (for tests).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.shared.lock().queued
    }

    /// The largest data packet the peer accepts on this channel.
    pub fn peer_max_packet(&self) -> u32 {
        self.shared.lock().remote_max
    }

    /// The next thing the peer sent; `None` once the channel is closed.
    /// Taking data out is what grants the peer more window.
    pub async fn recv(&self) -> Option<In> {
        loop {
            {
                let mut st = self.shared.lock();
                if let Some(m) = st.queue.pop_front() {
                    self.taken(st, &m);
                    return Some(m);
                }
                if st.closed {
                    st.reader_waiting = false;
                    return None;
                }
                st.reader_waiting = true;
            }
            self.shared.rx.notified().await;
        }
    }

    /// The next data the peer sent, if it is queued already and at most
    /// `max` bytes; never waits (a writer gathers what arrived into one
    /// write). Taking it grants window as [`ChanHandle::recv`] does.
    pub fn try_recv_data(&self, max: usize) -> Option<Chunk> {
        let mut st = self.shared.lock();
        if !matches!(st.queue.front(), Some(In::Data(d)) if d.len() <= max) {
            return None;
        }
        let m = st.queue.pop_front()?;
        self.taken(st, &m);
        match m {
            In::Data(d) => Some(d),
            _ => None,
        }
    }

    /// Bookkeeping for `m`, just taken from the queue: buffered bytes, and
    /// window granted back once [`GRANT_AT`] was read.
    fn taken(&self, mut st: MutexGuard<'_, ChanState>, m: &In) {
        st.reader_waiting = false;
        st.aged = st.aged.saturating_sub(1);
        st.owned = st.owned.saturating_sub(1);
        if let Some(n) = m.data_len() {
            st.queued -= n;
            BUFFERED.fetch_sub(n, Ordering::Relaxed);
            st.consumed += n as u32;
            if st.consumed >= GRANT_AT && !st.closed {
                let n = std::mem::take(&mut st.consumed);
                drop(st);
                self.tx.send(Cmd::Adjust { id: self.id, n });
            }
        }
    }

    /// Sends `data`, waiting for this channel's window only (and for room
    /// in the connection's outgoing queue when the socket itself is slow).
    /// A [`Chunk::Frame`] that fits the window and the peer's packet size
    /// goes as one packet, sealed in place.
    pub async fn send(&self, data: impl Into<Chunk>, ext: bool) -> Result<(), ()> {
        let mut data = data.into();
        loop {
            let left = data.len();
            if left == 0 {
                return Ok(());
            }
            let n = loop {
                {
                    let mut st = self.shared.lock();
                    if st.closed {
                        return Err(());
                    }
                    if st.remote_window > 0 {
                        let n = (left as u32)
                            .min(st.remote_window)
                            .min(st.remote_max.max(1))
                            .min(SEND_PACKET);
                        st.remote_window -= n;
                        break n;
                    }
                }
                self.wait_unpinning(self.shared.tx.notified(), &mut data)
                    .await;
            };
            match self.tx.space.try_acquire_many(n) {
                Ok(permit) => permit.forget(),
                Err(_) => self
                    .wait_unpinning(self.tx.space.acquire_many(n), &mut data)
                    .await
                    .map_err(|_| ())?
                    .forget(),
            }
            let chunk = if n as usize == left {
                std::mem::replace(&mut data, Chunk::Bytes(Bytes::new()))
            } else {
                let mut rest =
                    std::mem::replace(&mut data, Chunk::Bytes(Bytes::new())).into_bytes();
                let head = rest.split_to(n as usize);
                data = Chunk::Bytes(rest);
                Chunk::Bytes(head)
            };
            if !self.tx.send(Cmd::Data {
                id: self.id,
                ext,
                data: chunk,
            }) {
                return Err(());
            }
        }
    }

    /// Waits for `fut`; when that takes [`Ctl::unpin_after`], gives `data`
    /// a buffer of its own first and goes on waiting.
    async fn wait_unpinning<F: Future>(&self, fut: F, data: &mut Chunk) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        match tokio::time::timeout(self.tx.ctl.unpin_after, &mut fut).await {
            Ok(out) => out,
            Err(_) => {
                data.unpin();
                fut.await
            }
        }
    }

    pub fn eof(&self) {
        self.tx.send(Cmd::Eof(self.id));
    }

    pub fn close(&self) {
        self.tx.send(Cmd::Close(self.id));
    }

    pub fn exec(&self, command: &str) {
        self.tx.send(Cmd::Exec {
            id: self.id,
            command: command.to_string(),
        });
    }
}

impl Drop for ChanHandle {
    fn drop(&mut self) {
        self.close();
    }
}

pub(crate) mod counts;
mod direct;
#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod tests;
