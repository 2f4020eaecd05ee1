//! One stream: an SSH channel, and splicing it to another channel or to a
//! byte stream.
//!
//! Back-pressure: a write waits for the peer's channel window, and the read
//! side takes the next message only after that write completed, so a slow
//! reader slows its writer instead of filling memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::proto::conn::Incoming;
use super::proto::mux::{ChanHandle, Charge, Chunk, DirectSink, In};
use super::proto::wire::open_failure;
use super::tcp_write::SharedWrite;
use crate::protocol::limits::SPLICE_BUFFER;

/// Bytes moved by a splice, each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpliceStats {
    /// From this channel to the other side.
    pub sent: u64,
    /// From the other side into this channel.
    pub received: u64,
    /// Of both, the bytes a connection's task passed on itself, bypassing
    /// the splice's task (see `ssh/proto/mux/direct.rs`).
    pub bypassed: u64,
}

/// Which way bytes go through a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceDirection {
    /// From the channel the splice was called on to the other one.
    Forward = 0,
    /// From the other channel back.
    Back = 1,
}

/// A pause before a packet is passed on.
pub type PaceWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Paces a splice (the relay's bandwidth limits): asked before each packet
/// is passed on. While a direction waits it reads nothing more, so its
/// sender's window closes and back-pressure does the rest.
pub trait Pace: Send + Sync {
    /// `n` bytes are about to go `dir`: `Some` to hold them until it resolves.
    fn take(&self, dir: SpliceDirection, n: usize) -> Option<PaceWait>;
}

/// An open SSH channel carrying one stream. Dropping it closes the channel.
pub struct Channel {
    h: ChanHandle,
}

impl Channel {
    pub(crate) fn new(h: ChanHandle) -> Channel {
        Channel { h }
    }

    pub(crate) fn handle(&self) -> &ChanHandle {
        &self.h
    }

    /// The next data the peer sent, for message channels (signalling);
    /// `None` at EOF or close.
    pub async fn recv_data(&self) -> Option<bytes::Bytes> {
        loop {
            match self.h.recv().await? {
                In::Data(d) => return Some(d.into_bytes()),
                In::Eof => return None,
                _ => {}
            }
        }
    }

    /// Sends `data`, waiting for window; false once the channel is closed.
    pub async fn send_data(&self, data: Vec<u8>) -> bool {
        self.h.send(bytes::Bytes::from(data), false).await.is_ok()
    }

    /// Closes the channel now.
    pub fn close(&self) {
        self.h.close();
    }

    /// Splices two channels until both sides sent EOF or either closed.
    /// `sent` counts bytes from `self` to `other`.
    pub async fn splice(self, other: Channel) -> SpliceStats {
        self.splice_until(other, std::future::pending()).await
    }

    /// Like [`Channel::splice`], but closes both channels early when `stop`
    /// resolves (an admin disabled the device).
    pub async fn splice_until(
        self,
        other: Channel,
        stop: impl std::future::Future<Output = ()>,
    ) -> SpliceStats {
        self.splice_paced(other, stop, None).await
    }

    /// Like [`Channel::splice_until`], with every packet paced by `pace`.
    /// Every packet goes through the splice's own task (see
    /// [`Channel::splice_shaped`] for the direct path).
    pub async fn splice_paced(
        self,
        other: Channel,
        stop: impl std::future::Future<Output = ()>,
        pace: Option<&dyn Pace>,
    ) -> SpliceStats {
        self.splice_inner(other, stop, pace, pace.is_none(), None)
            .await
    }

    /// Like [`Channel::splice_paced`], and data may skip the splice's task:
    /// the connection task that received it queues it on the other
    /// connection when nothing of its channel waits and window, outbox
    /// space and `pace` allow (`ssh::proto::mux::direct`), one task
    /// hand-off instead of two per packet.
    pub async fn splice_shaped(
        self,
        other: Channel,
        stop: impl std::future::Future<Output = ()>,
        pace: Arc<dyn Pace>,
    ) -> SpliceStats {
        let shared = Some(pace);
        let pace = shared.as_deref();
        self.splice_inner(other, stop, pace, true, shared.clone())
            .await
    }

    async fn splice_inner(
        self,
        other: Channel,
        stop: impl std::future::Future<Output = ()>,
        pace: Option<&dyn Pace>,
        direct: bool,
        shared: Option<Arc<dyn Pace>>,
    ) -> SpliceStats {
        let (a, b) = (&self.h, &other.h);
        let mut stats = SpliceStats::default();
        let (eof_tx, eofs) = mpsc::unbounded_channel();
        let bypass = direct.then(|| Bypass::both(a, b, shared));
        {
            let forward = pace.map(|p| (p, SpliceDirection::Forward));
            let back = pace.map(|p| (p, SpliceDirection::Back));
            let a_to_b = pump(a, b, &mut stats.sent, eof_tx.clone(), forward);
            let b_to_a = pump(b, a, &mut stats.received, eof_tx, back);
            tokio::select! {
                _ = both_directions(a_to_b, b_to_a, eofs) => {}
                _ = stop => {}
            }
        }
        if let Some((forward, back)) = bypass {
            let (sent, received) = (forward.end(), back.end());
            stats.sent += sent;
            stats.received += received;
            stats.bypassed = sent + received;
        }
        a.close();
        b.close();
        stats
    }

    /// Splices this channel with a byte stream (a TCP socket, stdin/stdout).
    /// `sent` counts bytes from the channel to the stream.
    pub async fn splice_io<R, W>(self, reader: R, writer: W) -> SpliceStats
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.splice_io_paced(reader, writer, None).await
    }

    /// Splices this channel with a TCP stream, like [`Channel::splice_io`];
    /// data from the channel is written to the socket by the
    /// connection's task itself while this splice waits for it (see
    /// `ssh/tcp_write.rs`).
    pub async fn splice_tcp(self, tcp: TcpStream) -> SpliceStats {
        let (r, w) = tcp.into_split();
        let w = SharedWrite::new(w);
        let sink = w.sink();
        self.splice_io_with(r, w, None, Some(sink)).await
    }

    /// Like [`Channel::splice_io`], with every chunk paced by `pace`:
    /// [`SpliceDirection::Forward`] from the byte stream into the channel,
    /// [`SpliceDirection::Back`] from the channel to the stream.
    pub async fn splice_io_paced<R, W>(
        self,
        reader: R,
        writer: W,
        pace: Option<&dyn Pace>,
    ) -> SpliceStats
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.splice_io_with(reader, writer, pace, None).await
    }

    /// The splice with a byte stream; data from the channel may go to
    /// `sink` (the same stream as `writer`) directly while nothing waits.
    async fn splice_io_with<R, W>(
        self,
        mut reader: R,
        mut writer: W,
        pace: Option<&dyn Pace>,
        sink: Option<Arc<dyn DirectSink>>,
    ) -> SpliceStats
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let ch = &self.h;
        let mut stats = SpliceStats::default();
        let direct = sink.map(|sink| Bypass::to_sink(ch, sink));
        let (eof_tx, eofs) = mpsc::unbounded_channel();
        {
            let from_channel = eof_tx.clone();
            let to_io = async {
                let mut eof = false;
                loop {
                    match ch.recv().await {
                        Some(In::Data(data)) => {
                            // What else arrived already goes in the same write
                            // (a list per batch: an idle stream keeps none).
                            // A paced stream gathers no more than a packet's
                            // worth, so its charges stay as fine as before.
                            let most = if pace.is_some() {
                                PACED_GATHER
                            } else {
                                SPLICE_BUFFER
                            };
                            let mut parts = Vec::new();
                            let n = gather(ch, data, &mut parts, most);
                            stats.sent += n as u64;
                            if let Some(p) = pace
                                && let Some(wait) = p.take(SpliceDirection::Back, n)
                            {
                                wait.await;
                            }
                            let unpin_after = ch.tx.ctl.unpin_after;
                            if write_parts(&mut writer, &mut parts, unpin_after)
                                .await
                                .is_err()
                            {
                                return;
                            }
                            // Interactive streams (ssh sessions) need every
                            // byte delivered now, not when a buffer fills.
                            if writer.flush().await.is_err() {
                                return;
                            }
                        }
                        // EOF counts once per direction (the connection
                        // passes one per channel; this holds either way).
                        Some(In::Eof) if !std::mem::replace(&mut eof, true) => {
                            if let Some(d) = &direct {
                                d.stop();
                            }
                            let _ = writer.shutdown().await;
                            let _ = from_channel.send(());
                            // Keep reading: the close that follows must end
                            // the splice even while the other direction waits.
                        }
                        None => return,
                        Some(_) => {}
                    }
                }
            };
            let from_io = async {
                let mut buf = BytesMut::with_capacity(SPLICE_BUFFER);
                loop {
                    buf.reserve(SPLICE_BUFFER);
                    match reader.read_buf(&mut buf).await {
                        Ok(0) => {
                            ch.eof();
                            let _ = eof_tx.send(());
                            // Nothing more will come from the stream; the
                            // other direction decides when we are done.
                            std::future::pending::<()>().await;
                        }
                        Ok(n) => {
                            stats.received += n as u64;
                            if let Some(p) = pace
                                && let Some(wait) = p.take(SpliceDirection::Forward, n)
                            {
                                wait.await;
                            }
                            if ch.send(buf.split().freeze(), false).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            };
            both_directions(to_io, from_io, eofs).await;
        }
        if let Some(d) = direct {
            stats.bypassed = d.end();
            stats.sent += stats.bypassed;
        }
        ch.close();
        stats
    }
}

/// Data parts gathered into one write to a byte stream, at most.
const WRITE_PARTS: usize = 16;

/// Bytes a paced splice gathers into one write, at most (about a packet).
const PACED_GATHER: usize = 64 * 1024;

/// `first`, and the data queued behind it on `ch` (up to [`WRITE_PARTS`]
/// parts and `most` bytes), into `parts`: what one read of the connection
/// brought leaves in one write instead of one per packet. Never waits for
/// more. Empty data (valid in SSH) is dropped. Returns the bytes gathered.
fn gather(ch: &ChanHandle, first: Chunk, parts: &mut Vec<Chunk>, most: usize) -> usize {
    let mut n = first.len();
    if n > 0 {
        parts.push(first);
    }
    while parts.len() < WRITE_PARTS && n < most {
        match ch.try_recv_data(most - n) {
            Some(d) => {
                n += d.len();
                if !d.is_empty() {
                    parts.push(d);
                }
            }
            None => break,
        }
    }
    n
}

/// Writes all of `parts`, in order, with vectored writes. Parts that share
/// a connection's read buffer get buffers of their own once a write has
/// waited `unpin_after` (a stalled reader must not keep many read buffers
/// alive, as for data still queued: see `ChanHandle::unpin_waiting`).
async fn write_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &mut [Chunk],
    unpin_after: std::time::Duration,
) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    let mut pinned = parts.iter().any(Chunk::is_pinned);
    while i < parts.len() {
        let written = {
            let mut iov = [std::io::IoSlice::new(&[]); WRITE_PARTS];
            let mut k = 0;
            for (j, p) in parts[i..].iter().enumerate().take(WRITE_PARTS) {
                iov[j] = std::io::IoSlice::new(if j == 0 { &p[off..] } else { p });
                k = j + 1;
            }
            let write = w.write_vectored(&iov[..k]);
            if pinned {
                // A write that has not finished has written nothing:
                // dropping it on the timeout loses no byte.
                tokio::time::timeout(unpin_after, write).await.ok()
            } else {
                Some(write.await)
            }
        };
        let Some(written) = written else {
            parts[i..].iter_mut().for_each(Chunk::unpin);
            pinned = false;
            continue;
        };
        let mut n = written?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < parts.len() && n >= parts[i].len() - off {
            n -= parts[i].len() - off;
            (i, off) = (i + 1, 0);
        }
        off += n;
    }
    Ok(())
}

/// One channel's direct path while its splice runs (see
/// `ssh/proto/mux/direct.rs`). It ends with the splice, however that ends
/// (on drop too), so a cancelled splice passes nothing on after it.
struct Bypass<'a> {
    ch: &'a ChanHandle,
    moved: Arc<AtomicU64>,
}

impl<'a> Bypass<'a> {
    /// Both ways between two spliced channels, each paced by `pace`.
    fn both(
        a: &'a ChanHandle,
        b: &'a ChanHandle,
        pace: Option<Arc<dyn Pace>>,
    ) -> (Bypass<'a>, Bypass<'a>) {
        let charge = |dir: SpliceDirection| -> Option<Charge> {
            let pace = pace.clone()?;
            Some(Box::new(move |n| pace.take(dir, n)))
        };
        let sent = a.direct_to(b, charge(SpliceDirection::Forward));
        let received = b.direct_to(a, charge(SpliceDirection::Back));
        (
            Bypass { ch: a, moved: sent },
            Bypass {
                ch: b,
                moved: received,
            },
        )
    }

    /// From the channel straight to its byte stream's socket.
    fn to_sink(ch: &'a ChanHandle, sink: Arc<dyn DirectSink>) -> Bypass<'a> {
        let moved = ch.direct_to_sink(sink);
        Bypass { ch, moved }
    }

    /// No more data goes directly.
    fn stop(&self) {
        self.ch.no_direct();
    }

    /// Ends it; the bytes that went directly.
    fn end(self) -> u64 {
        self.stop();
        self.moved.load(Ordering::Relaxed)
    }
}

impl Drop for Bypass<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Moves one direction: data from `read` to `write`; reports EOF on `eof`
/// (once) and goes on reading, so that a close after EOF is seen at once. Returns
/// when the source closed or the sink failed. Reading the next message only
/// after the write completed is what carries a slow reader's back-pressure
/// from one channel to the other.
async fn pump(
    read: &ChanHandle,
    write: &ChanHandle,
    count: &mut u64,
    eof: mpsc::UnboundedSender<()>,
    pace: Option<(&dyn Pace, SpliceDirection)>,
) {
    let mut seen_eof = false;
    loop {
        match read.recv().await {
            Some(In::Data(data)) => {
                *count += data.len() as u64;
                // The direct path may have charged the pace already.
                if let Some(wait) = read.take_pace_hold() {
                    wait.await;
                } else if let Some((p, dir)) = pace
                    && let Some(wait) = p.take(dir, data.len())
                {
                    wait.await;
                }
                if write.send(data, false).await.is_err() {
                    return;
                }
            }
            // A second EOF from the same side must not count as the other
            // side's and end the splice early.
            Some(In::Eof) if !std::mem::replace(&mut seen_eof, true) => {
                write.eof();
                let _ = eof.send(());
            }
            None => return,
            Some(_) => {}
        }
    }
}

/// Runs both directions until either ends (a close or a failed write) or
/// both have reported EOF.
async fn both_directions(
    a: impl std::future::Future<Output = ()>,
    b: impl std::future::Future<Output = ()>,
    mut eofs: mpsc::UnboundedReceiver<()>,
) {
    tokio::pin!(a, b);
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = &mut a => return,
            _ = &mut b => return,
            Some(()) = eofs.recv() => {
                seen += 1;
                if seen == 2 {
                    return;
                }
            }
        }
    }
}

/// Why a stream was refused, as the other end will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// A sentence for a person: OpenSSH prints it after "open failed".
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Policy says no (SSH_OPEN_ADMINISTRATIVELY_PROHIBITED).
    Prohibited,
    /// The target could not be reached (SSH_OPEN_CONNECT_FAILED).
    ConnectFailed,
    /// Out of some resource (SSH_OPEN_RESOURCE_SHORTAGE).
    ResourceShortage,
    /// The target is not at this end, but may be elsewhere (a private
    /// reason code: only another Warren relay reads it).
    NotHere,
}

impl RefusalKind {
    const ALL: [RefusalKind; 4] = [
        RefusalKind::Prohibited,
        RefusalKind::ConnectFailed,
        RefusalKind::ResourceShortage,
        RefusalKind::NotHere,
    ];

    /// Its reason code on the wire.
    fn code(self) -> u32 {
        match self {
            RefusalKind::Prohibited => open_failure::ADMINISTRATIVELY_PROHIBITED,
            RefusalKind::ConnectFailed => open_failure::CONNECT_FAILED,
            RefusalKind::ResourceShortage => open_failure::RESOURCE_SHORTAGE,
            RefusalKind::NotHere => open_failure::NOT_HERE,
        }
    }

    /// The kind a peer's reason code stands for, if it is one of ours.
    pub fn from_code(code: u32) -> Option<RefusalKind> {
        RefusalKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl Refusal {
    pub fn prohibited(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Prohibited,
            message: message.into(),
        }
    }

    pub fn connect_failed(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::ConnectFailed,
            message: message.into(),
        }
    }

    /// For a peer that is another Warren relay only ([`RefusalKind::NotHere`]).
    pub fn not_here(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::NotHere,
            message: message.into(),
        }
    }

    fn code(&self) -> u32 {
        self.kind.code()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A channel the peer asked to open, not yet accepted or refused. Dropping it
/// refuses it.
pub struct IncomingChannel {
    inner: Incoming,
}

impl IncomingChannel {
    pub(crate) fn new(inner: Incoming) -> Self {
        IncomingChannel { inner }
    }

    /// The largest data packet the peer accepts on this channel.
    pub fn peer_max_packet(&self) -> u32 {
        self.inner.handle.peer_max_packet()
    }

    pub async fn accept(self) -> Channel {
        Channel::new(self.inner.accept())
    }

    /// Refuses with the reason text, which the peer receives with the refusal.
    pub async fn refuse(self, refusal: &Refusal) {
        self.inner.refuse(refusal.code(), &refusal.message);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::Poll;

    use bytes::Bytes;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::ssh::proto::mux::{ChanShared, Cmd, ConnTx, Ctl, OUTBOX};

    fn channel(id: u32) -> (Channel, Arc<ChanShared>, crate::ssh::proto::queue::CmdRx) {
        let (cmds, rx) = crate::ssh::proto::queue::channel();
        let tx = ConnTx {
            cmds,
            space: Arc::new(Semaphore::new(OUTBOX)),
            ctl: Ctl::new(),
        };
        let shared = ChanShared::new(1 << 20, 32 * 1024);
        (
            Channel::new(ChanHandle::new(id, shared.clone(), tx)),
            shared,
            rx,
        )
    }

    /// Polls `f` until it finishes or has nothing left to do (select!
    /// polls its branches in random order, so one poll may not be enough):
    /// whether it finished.
    async fn done<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut f = f;
        for _ in 0..20 {
            if std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_ready())).await {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn a_splice_counts_eof_per_direction_not_per_message() {
        let (a, a_in, mut a_cmds) = channel(1);
        let (b, b_in, _b_cmds) = channel(2);
        let splice = a.splice(b);
        tokio::pin!(splice);
        // One side says EOF twice: the other side still has data to send.
        a_in.push(In::Eof);
        a_in.push(In::Eof);
        assert!(
            !done(splice.as_mut()).await,
            "two EOFs from one side ended the splice"
        );
        b_in.push(In::Data(Bytes::from_static(b"late reply").into()));
        assert!(!done(splice.as_mut()).await);
        match a_cmds.try_recv() {
            Ok(Cmd::Data { data, .. }) => assert_eq!(&data[..], b"late reply"),
            _ => panic!("the other direction's data was not passed on"),
        }
        // Its own EOF ends the splice.
        b_in.push(In::Eof);
        assert!(done(splice.as_mut()).await);
    }

    /// A byte stream that records each write call, taking at most `max`
    /// bytes per call, and (with `open`) nothing until `open` is set.
    struct Recorder {
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        max: usize,
        open: Option<Arc<std::sync::atomic::AtomicBool>>,
    }

    impl Recorder {
        /// Whether the stream takes nothing now; if so it is woken again
        /// by a timer of the test, like a socket by epoll.
        fn stalled(&self, cx: &std::task::Context<'_>) -> bool {
            if self.open.as_ref().is_none_or(|o| o.load(Ordering::Relaxed)) {
                return false;
            }
            let waker = cx.waker().clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                waker.wake();
            });
            true
        }

        fn record(&self, bufs: &[std::io::IoSlice<'_>]) -> usize {
            let mut one: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            one.truncate(self.max);
            let n = one.len();
            self.writes.lock().unwrap().push(one);
            n
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            if self.stalled(cx) {
                return Poll::Pending;
            }
            Poll::Ready(Ok(self.record(bufs)))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Splices a channel holding `queued` (then EOF) to a recorder; its writes.
    async fn written(queued: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let (ch, shared, _cmds) = channel(1);
        for q in queued {
            shared.push(In::Data(Bytes::copy_from_slice(q).into()));
        }
        shared.push(In::Eof);
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Recorder {
            writes: writes.clone(),
            max,
            open: None,
        };
        let stats = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ch.splice_io(tokio::io::empty(), w),
        )
        .await
        .expect("the splice ends at EOF both ways");
        let total: usize = queued.iter().map(|q| q.len()).sum();
        assert_eq!(stats.sent, total as u64);
        writes.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn data_queued_for_a_byte_stream_leaves_in_one_write_in_order() {
        let got = written(&[b"one ", b"two ", b"three"], usize::MAX).await;
        assert_eq!(got, vec![b"one two three".to_vec()]);
        // A lone message: written as it is.
        assert_eq!(
            written(&[b"ping"], usize::MAX).await,
            vec![b"ping".to_vec()]
        );
        // Short writes: the rest follows, in order, nothing twice.
        let got = written(&[b"abc", b"defgh", b"", b"ij"], 4).await;
        assert_eq!(got.concat(), b"abcdefghij".to_vec());
        assert!(got.iter().all(|w| w.len() <= 4));
    }

    #[tokio::test]
    async fn empty_data_alone_does_not_end_a_byte_stream_splice() {
        let (ch, shared, _cmds) = channel(1);
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Recorder {
            writes: writes.clone(),
            max: usize::MAX,
            open: None,
        };
        let splice = ch.splice_io(tokio::io::empty(), w);
        tokio::pin!(splice);
        // Empty data (valid in SSH) with nothing behind it.
        shared.push(In::Data(Bytes::new().into()));
        assert!(!done(splice.as_mut()).await, "empty data ended the splice");
        shared.push(In::Data(Bytes::from_static(b"after").into()));
        shared.push(In::Eof);
        assert!(done(splice.as_mut()).await);
        assert_eq!(writes.lock().unwrap().concat(), b"after".to_vec());
    }

    #[tokio::test(start_paused = true)]
    async fn gathered_parts_of_a_read_buffer_get_their_own_when_the_writer_stalls() {
        // Two parts sharing one buffer (as frames share a connection's
        // read buffer): pinned while that buffer is alive elsewhere.
        let read_buffer = Bytes::from(vec![7u8; 64]);
        let (a, b) = (read_buffer.slice(..32), read_buffer.slice(32..));
        let mut parts = vec![Chunk::from(a), Chunk::from(b)];
        assert!(parts.iter().all(Chunk::is_pinned));
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w = Recorder {
            writes: writes.clone(),
            max: usize::MAX,
            open: Some(open.clone()),
        };
        let unpin_after = std::time::Duration::from_secs(2);
        {
            let write = write_parts(&mut w, &mut parts, unpin_after);
            tokio::pin!(write);
            // Before the limit: still sharing; after it: copies of their own.
            tokio::select! {
                _ = &mut write => panic!("a stalled writer took the data"),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            tokio::select! {
                _ = &mut write => panic!("a stalled writer took the data"),
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
            open.store(true, Ordering::Relaxed);
            write.await.expect("written once the writer takes data");
        }
        assert!(
            parts.iter().all(|p| !p.is_pinned()),
            "parts still pin the read buffer"
        );
        assert_eq!(writes.lock().unwrap().concat(), vec![7u8; 64]);
    }
}
