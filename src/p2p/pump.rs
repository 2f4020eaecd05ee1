//! Moving a stream's bytes between a QUIC stream and a local byte stream
//! (the TCP connection on either end of a direct path), in big pieces and
//! without a copy of our own:
//!
//! - local → QUIC: each read fills a fresh buffer, handed to quinn as it
//!   is (`write_chunk`, no copy into quinn's send buffer); the buffer starts
//!   at [`LOCAL_READ_MIN`] and doubles while reads fill it, up to
//!   [`LOCAL_READ`], so an idle or interactive stream keeps a small one;
//! - QUIC → local: quinn's received chunks are taken as they are
//!   (`read_chunks`, no copy out of quinn's reassembly) and written to the
//!   local stream together, [`CHUNKS_PER_WRITE`] at most per vectored write,
//!   then let go (a chunk is a slice of a whole received datagram batch:
//!   one kept would keep the batch).
//!
//! A generic `tokio::io::copy` moves 8 KiB per read and per write, and
//! copies twice; at a few Gbit/s that is a system call and two wake-ups per
//! 8 KiB on each side.

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest read from the local stream, one QUIC write.
pub const LOCAL_READ: usize = 256 * 1024;

/// First read buffer of a stream (and what it shrinks back to).
pub const LOCAL_READ_MIN: usize = 16 * 1024;

/// Most chunks received from QUIC that go to the local stream in one write.
pub const CHUNKS_PER_WRITE: usize = 64;

/// Copies `reader` to `send` until `reader` ends, then finishes `send`
/// (also after a failed read: the peer sees the end of what was read).
/// Counts into `n` as it goes (so a failed copy still says how far it got).
pub async fn to_quic<R>(reader: &mut R, send: &mut quinn::SendStream, n: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let copied = copy_to_quic(reader, send, n).await;
    // Finishing fails only when the stream was already reset or closed,
    // which the peer has seen for itself.
    let _ = send.finish();
    copied
}

async fn copy_to_quic<R>(
    reader: &mut R,
    send: &mut quinn::SendStream,
    n: &mut u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut buf = BytesMut::new();
    let mut size = LOCAL_READ_MIN;
    loop {
        // The previous buffer went to quinn whole; this one is new unless
        // the last read left room in it.
        if buf.capacity() < size / 4 {
            buf = BytesMut::with_capacity(size);
        }
        let room = buf.capacity();
        let got = reader.read_buf(&mut buf).await?;
        if got == 0 {
            break;
        }
        size = next_read_size(size, got, room);
        *n += got as u64;
        send.write_chunk(buf.split().freeze())
            .await
            .map_err(io::Error::other)?;
    }
    Ok(())
}

/// Writes `first` (bytes a buffered header read already took from `recv`),
/// then copies `recv` to `writer` until the peer finishes the stream; flushes
/// and shuts `writer` down either way. Counts into `n` as it goes.
pub async fn from_quic<W>(
    first: &[u8],
    recv: &mut quinn::RecvStream,
    writer: &mut W,
    n: &mut u64,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let copied = copy_from_quic(first, recv, writer, n).await;
    // A flush first: some writers (tokio's stdout, which `warren proxy`
    // writes to) finish their writes in the background and do not wait
    // for them on shutdown.
    let flushed = writer.flush().await;
    let shut = writer.shutdown().await;
    copied.and(flushed).and(shut)
}

async fn copy_from_quic<W>(
    first: &[u8],
    recv: &mut quinn::RecvStream,
    writer: &mut W,
    n: &mut u64,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    writer.write_all(first).await?;
    *n += first.len() as u64;
    let mut chunks: Vec<Bytes> = vec![Bytes::new(); CHUNKS_PER_WRITE];
    while let Some(k) = recv
        .read_chunks(&mut chunks)
        .await
        .map_err(io::Error::other)?
    {
        let len: usize = chunks[..k].iter().map(Bytes::len).sum();
        write_all_chunks(writer, &mut chunks[..k]).await?;
        // Written chunks are empty but still hold their datagram batch.
        chunks[..k].fill(Bytes::new());
        *n += len as u64;
    }
    Ok(())
}

/// The next read buffer's size: double while reads fill the room they had,
/// back to the smallest after a read of under a quarter of it.
fn next_read_size(size: usize, got: usize, room: usize) -> usize {
    if got >= room {
        (size * 2).min(LOCAL_READ)
    } else if got < size / 4 {
        LOCAL_READ_MIN
    } else {
        size
    }
}

/// Writes every chunk, in order, with as few (vectored) writes as the
/// writer allows. The chunks are left empty.
async fn write_all_chunks<W>(writer: &mut W, chunks: &mut [Bytes]) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut done = 0;
    let mut first = 0;
    while done < total {
        while chunks[first].is_empty() {
            first += 1;
        }
        let wrote = if writer.is_write_vectored() {
            let mut slices = [IoSlice::new(&[]); CHUNKS_PER_WRITE];
            let mut k = 0;
            for c in chunks[first..].iter().filter(|c| !c.is_empty()) {
                if k == slices.len() {
                    break;
                }
                slices[k] = IoSlice::new(c);
                k += 1;
            }
            writer.write_vectored(&slices[..k]).await?
        } else {
            writer.write(&chunks[first]).await?
        };
        if wrote == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += wrote;
        let mut left = wrote;
        for c in chunks[first..].iter_mut() {
            let take = left.min(c.len());
            c.advance(take);
            left -= take;
            if left == 0 {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_grows_while_reads_fill_it_and_shrinks_when_they_do_not() {
        // A bulk stream: every read fills its room, up to the largest.
        let mut size = LOCAL_READ_MIN;
        let mut seen = vec![size];
        while size < LOCAL_READ {
            size = next_read_size(size, size, size);
            seen.push(size);
        }
        assert_eq!(seen, [16, 32, 64, 128, 256].map(|k| k * 1024));
        assert_eq!(
            next_read_size(LOCAL_READ, LOCAL_READ, LOCAL_READ),
            LOCAL_READ
        );
        // A keystroke: back to the smallest buffer.
        assert_eq!(next_read_size(LOCAL_READ, 40, LOCAL_READ), LOCAL_READ_MIN);
        // Half full: stays.
        assert_eq!(next_read_size(64 * 1024, 32 * 1024, 64 * 1024), 64 * 1024);
    }
}
