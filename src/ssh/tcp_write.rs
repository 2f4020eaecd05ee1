//! The write half of a TCP stream that a channel's splice shares with its
//! connection's task: the splice writes through it as any writer, and the
//! connection writes data straight to the socket when the splice
//! waits with nothing in hand ([`super::proto::mux::DirectSink`]), so a
//! message to a device's local service wakes one task instead of two.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use super::proto::mux::DirectSink;

/// A write half the splice writes through; [`SharedWrite::sink`] is the
/// connection's way to the same socket.
pub struct SharedWrite(Arc<OwnedWriteHalf>);

impl SharedWrite {
    pub fn new(w: OwnedWriteHalf) -> SharedWrite {
        SharedWrite(Arc::new(w))
    }

    /// The socket for the connection's direct path. It writes only while
    /// the splice waits for data, so the two never write at once.
    pub fn sink(&self) -> Arc<dyn DirectSink> {
        self.0.clone()
    }

    fn socket(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    /// Waits for room, then writes with `write`; a write that finds none
    /// after all forgets the readiness and waits again.
    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.socket().poll_write_ready(cx))?;
            match write(self.socket()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl DirectSink for OwnedWriteHalf {
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        OwnedWriteHalf::try_write(self, data)
    }
}

impl AsyncWrite for SharedWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the stream's sending side (the read half and the other clones
    /// stay usable); the socket closes when the last half is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = rustix::net::shutdown(self.socket(), rustix::net::Shutdown::Write);
        Poll::Ready(match shut {
            Err(rustix::io::Errno::NOTCONN) => Ok(()),
            r => r.map_err(io::Error::from),
        })
    }
}
