//! One stream: an SSH channel, and splicing it to another channel or to a
//! byte stream.
//!
//! Back-pressure: a write waits for the peer's channel window, and the read
//! side takes the next message only after that write completed, so a slow
//! reader slows its writer instead of filling memory.

use bytes::BytesMut;
use russh::{ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::protocol::limits::SPLICE_BUFFER;

/// Bytes moved by a splice, each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpliceStats {
    /// From this channel to the other side.
    pub sent: u64,
    /// From the other side into this channel.
    pub received: u64,
}

enum Writer {
    Server(ChannelWriteHalf<russh::server::Msg>),
    Client(ChannelWriteHalf<russh::client::Msg>),
}

impl Writer {
    async fn data(&self, data: bytes::Bytes) -> Result<(), russh::Error> {
        match self {
            Writer::Server(w) => w.data_bytes(data).await,
            Writer::Client(w) => w.data_bytes(data).await,
        }
    }

    async fn eof(&self) {
        let _ = match self {
            Writer::Server(w) => w.eof().await,
            Writer::Client(w) => w.eof().await,
        };
    }

    async fn close(&self) {
        let _ = match self {
            Writer::Server(w) => w.close().await,
            Writer::Client(w) => w.close().await,
        };
    }
}

/// An open SSH channel carrying one stream.
pub struct Channel {
    read: ChannelReadHalf,
    write: Writer,
}

impl Channel {
    pub(crate) fn from_server(c: russh::Channel<russh::server::Msg>) -> Channel {
        let (read, write) = c.split();
        Channel {
            read,
            write: Writer::Server(write),
        }
    }

    pub(crate) fn from_client(c: russh::Channel<russh::client::Msg>) -> Channel {
        let (read, write) = c.split();
        Channel {
            read,
            write: Writer::Client(write),
        }
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
        let Channel {
            read: mut ra,
            write: wa,
        } = self;
        let Channel {
            read: mut rb,
            write: wb,
        } = other;
        let mut stats = SpliceStats::default();
        let (eof_tx, eofs) = mpsc::unbounded_channel();
        {
            let a_to_b = pump(&mut ra, &wb, &mut stats.sent, eof_tx.clone());
            let b_to_a = pump(&mut rb, &wa, &mut stats.received, eof_tx);
            tokio::select! {
                _ = both_directions(a_to_b, b_to_a, eofs) => {}
                _ = stop => {}
            }
        }
        wa.close().await;
        wb.close().await;
        stats
    }

    /// Splices this channel with a byte stream (a TCP socket, stdin/stdout).
    /// `sent` counts bytes from the channel to the stream.
    pub async fn splice_io<R, W>(self, mut reader: R, mut writer: W) -> SpliceStats
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Channel { mut read, write } = self;
        let mut stats = SpliceStats::default();
        let (eof_tx, eofs) = mpsc::unbounded_channel();
        {
            let from_channel = eof_tx.clone();
            let to_io = async {
                loop {
                    match read.wait().await {
                        Some(ChannelMsg::Data { data }) => {
                            stats.sent += data.len() as u64;
                            if writer.write_all(&data).await.is_err() {
                                return;
                            }
                            // Interactive streams (ssh sessions) need every
                            // byte delivered now, not when a buffer fills.
                            if writer.flush().await.is_err() {
                                return;
                            }
                        }
                        Some(ChannelMsg::Eof) => {
                            let _ = writer.shutdown().await;
                            let _ = from_channel.send(());
                            // Keep reading: the close that follows must end
                            // the splice even while the other direction waits.
                        }
                        Some(ChannelMsg::Close) | None => return,
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
                            write.eof().await;
                            let _ = eof_tx.send(());
                            // Nothing more will come from the stream; the
                            // other direction decides when we are done.
                            std::future::pending::<()>().await;
                        }
                        Ok(n) => {
                            stats.received += n as u64;
                            if write.data(buf.split().freeze()).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            };
            both_directions(to_io, from_io, eofs).await;
        }
        write.close().await;
        stats
    }
}

/// Moves one direction: data from `read` to `write`; reports EOF on `eof`
/// and goes on reading, so that a close after EOF is seen at once. Returns
/// when the source closed or the sink failed.
async fn pump(
    read: &mut ChannelReadHalf,
    write: &Writer,
    count: &mut u64,
    eof: mpsc::UnboundedSender<()>,
) {
    loop {
        match read.wait().await {
            Some(ChannelMsg::Data { data }) => {
                *count += data.len() as u64;
                if write.data(data).await.is_err() {
                    return;
                }
            }
            Some(ChannelMsg::Eof) => {
                write.eof().await;
                let _ = eof.send(());
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
}

/// Runs both directions until either ends (a close or a failed write) or
/// both have reported EOF. Dropping the other direction also stops a write
/// that waits for window on a channel the peer has closed: the SSH library
/// would wait for that window forever.
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

    fn to_failure(&self) -> ChannelOpenFailure {
        let code = match self.kind {
            RefusalKind::Prohibited => 1,
            RefusalKind::ConnectFailed => 2,
            RefusalKind::ResourceShortage => 4,
        };
        ChannelOpenFailure::Other {
            code,
            reason: self.message.clone(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

enum Reply {
    Server(russh::server::ChannelOpenHandle),
    Client(russh::client::ChannelOpenHandle),
}

/// A channel the peer asked to open, not yet accepted or refused. Dropping it
/// refuses it.
pub struct IncomingChannel {
    channel: Channel,
    reply: Reply,
}

impl IncomingChannel {
    pub(crate) fn server(
        c: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
    ) -> Self {
        IncomingChannel {
            channel: Channel::from_server(c),
            reply: Reply::Server(reply),
        }
    }

    pub(crate) fn client(
        c: russh::Channel<russh::client::Msg>,
        reply: russh::client::ChannelOpenHandle,
    ) -> Self {
        IncomingChannel {
            channel: Channel::from_client(c),
            reply: Reply::Client(reply),
        }
    }

    pub async fn accept(self) -> Channel {
        match self.reply {
            Reply::Server(r) => r.accept().await,
            Reply::Client(r) => r.accept().await,
        }
        self.channel
    }

    pub async fn refuse(self, refusal: &Refusal) {
        match self.reply {
            Reply::Server(r) => r.reject(refusal.to_failure()).await,
            Reply::Client(r) => r.reject(refusal.to_failure()).await,
        }
    }
}
