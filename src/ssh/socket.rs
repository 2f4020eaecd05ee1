//! The byte stream an SSH connection runs on: a TCP socket, or one end of a
//! unix socket pair whose other end a TLS or WebSocket adapter feeds
//! ([`Socket::bridge`]). The connection's loop waits for readiness and
//! reads and writes without blocking; both kinds of socket offer exactly
//! that, so the loop stays one loop with no per-byte indirection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Largest read of the adapter between a TLS stream and the socket pair:
/// big enough that bulk transfers take few system calls per TLS record.
const BRIDGE_BUFFER: usize = 64 * 1024;

/// A socket for [`crate::ssh::server::start`] and [`crate::ssh::client::connect`].
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    /// One end of a socket pair; a task carries the other end over TLS or
    /// a WebSocket.
    Pair(UnixStream),
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Socket {
        Socket::Tcp(s)
    }
}

impl From<UnixStream> for Socket {
    fn from(s: UnixStream) -> Socket {
        Socket::Pair(s)
    }
}

impl Socket {
    /// A socket whose bytes a spawned task carries to and from `stream`
    /// (a TLS stream); the task ends when either side closes.
    pub fn bridge<S>(stream: S) -> io::Result<Socket>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (ours, theirs) = UnixStream::pair()?;
        tokio::spawn(carry(stream, ours));
        Ok(Socket::Pair(theirs))
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_nodelay(on),
            Socket::Pair(_) => Ok(()),
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.readable().await,
            Socket::Pair(s) => s.readable().await,
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.writable().await,
            Socket::Pair(s) => s.writable().await,
        }
    }

    /// Reads what the socket holds into `buf`'s spare room without
    /// waiting. A read that leaves room over drained the socket, so it
    /// also forgets the socket's readiness: the next [`Socket::readable`]
    /// waits for new bytes (edge-triggered epoll reports every arrival)
    /// instead of waking the loop for a read that finds nothing, which
    /// cost every small message a second system call and a second turn of
    /// the loop. Tokio's own `poll_read` does the same.
    pub fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        let spare = buf.capacity() - buf.len();
        let mut got = 0;
        let mut drained = |read: io::Result<usize>| {
            let n = read?;
            got = n;
            if n > 0 && n < spare {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            } else {
                Ok(n)
            }
        };
        let readable = tokio::io::Interest::READABLE;
        let read = match self {
            Socket::Tcp(s) => s.try_io(readable, || drained(s.try_read_buf(buf))),
            Socket::Pair(s) => s.try_io(readable, || drained(s.try_read_buf(buf))),
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            read => read,
        }
    }

    pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.try_write_vectored(bufs),
            Socket::Pair(s) => s.try_write_vectored(bufs),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Pair(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Pair(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Pair(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Pair(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Carries bytes both ways between `stream` and `pair` until either
/// direction ends: an SSH connection is over when either side closes, and
/// waiting for the other direction would keep a half-open peer forever.
async fn carry<S>(stream: S, pair: UnixStream)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut sr, mut sw) = tokio::io::split(stream);
    let (mut pr, mut pw) = pair.into_split();
    let inbound = async {
        let _ = pump(&mut sr, &mut pw).await;
        let _ = pw.shutdown().await;
    };
    let outbound = async {
        let _ = pump(&mut pr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}

async fn pump<R, W>(r: &mut R, w: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BRIDGE_BUFFER];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use tokio::net::TcpListener;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_read_that_drains_the_socket_waits_for_new_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let s = Socket::Tcp(listener.accept().await.unwrap().0);
        let mut buf = bytes::BytesMut::with_capacity(1024);
        for word in [&b"hello"[..], b"world"] {
            peer.write_all(word).await.unwrap();
            tokio::time::timeout(WAIT, s.readable())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(s.try_read_buf(&mut buf).unwrap(), 5);
            // Drained: no wake-up for a read that would find nothing.
            assert!(s.readable().now_or_never().is_none(), "still ready");
        }
        assert_eq!(&buf[..], b"helloworld");
        // A read that fills the buffer keeps the readiness: more may wait.
        peer.write_all(&[7; 100]).await.unwrap();
        tokio::time::timeout(WAIT, s.readable())
            .await
            .unwrap()
            .unwrap();
        let mut small = bytes::BytesMut::with_capacity(10);
        let spare = small.capacity();
        assert_eq!(s.try_read_buf(&mut small).unwrap(), spare);
        assert!(s.readable().now_or_never().is_some(), "readiness lost");
        // The end of the stream reads as 0, as before.
        drop(peer);
        let mut rest = bytes::BytesMut::with_capacity(4096);
        let mut n = spare;
        loop {
            tokio::time::timeout(WAIT, s.readable())
                .await
                .unwrap()
                .unwrap();
            match s.try_read_buf(&mut rest) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, 100);
    }
}
