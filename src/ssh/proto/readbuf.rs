//! A connection's read buffer, and the reuse of bulk read buffers.
//!
//! A connection decrypts each packet in place in its read buffer and hands
//! the payload on as a slice of it, so a buffer stays alive until the last
//! packet cut from it has been forwarded. Under bulk transfer that is most
//! of the time: the next read needs room while packets of the last one are
//! still queued on a channel. Allocating a fresh 512 KiB buffer for it and
//! freeing the old one later made the system allocator return the pages to
//! the kernel and fault them in again on the next read: a tenth of the
//! relay's CPU under throughput (perf: `exc_page_fault` under `read_some`,
//! plus `clear_page` and `unmap_page_range`). Bulk buffers that were
//! replaced wait in a small pool until their packets are gone, and then
//! serve the next read of any connection.

use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;

/// Capacity of a bulk read buffer: a full read, plus the unfinished packet
/// carried over from the last one.
pub const BULK: usize = 640 * 1024;
/// Bulk buffers kept for reuse, at most (10 MiB).
const KEEP: usize = 16;

/// Replaced bulk buffers, waiting until nothing uses them.
pub struct Pool {
    spare: Mutex<Vec<BytesMut>>,
}

/// The pool every connection of the process shares.
static SHARED: Pool = Pool::new();

impl Pool {
    pub const fn new() -> Pool {
        Pool {
            spare: Mutex::new(Vec::new()),
        }
    }

    fn spare(&self) -> MutexGuard<'_, Vec<BytesMut>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled bulk buffer that nothing else uses any more, empty.
    fn take(&self) -> Option<BytesMut> {
        let mut spare = self.spare();
        let i = spare.iter_mut().position(|b| b.try_reclaim(BULK))?;
        Some(spare.swap_remove(i))
    }

    /// Keeps a replaced bulk buffer for reuse once its packets are gone.
    fn give(&self, mut buf: BytesMut) {
        buf.clear();
        let mut spare = self.spare();
        if spare.len() < KEEP {
            spare.push(buf);
        }
    }
}

/// Bytes read from the socket and not yet cut into packets.
pub struct ReadBuf {
    pub buf: BytesMut,
    /// `buf` is a bulk buffer (of [`BULK`] bytes), to be given back to the
    /// pool when it is replaced.
    bulk: bool,
    pool: &'static Pool,
}

impl Default for ReadBuf {
    fn default() -> ReadBuf {
        ReadBuf::with_pool(&SHARED)
    }
}

impl ReadBuf {
    pub fn with_pool(pool: &'static Pool) -> ReadBuf {
        ReadBuf {
            buf: BytesMut::new(),
            bulk: false,
            pool,
        }
    }

    /// Makes room for `additional` more bytes after the unread ones: in
    /// place when no packet cut from the buffer is still in use, otherwise in
    /// another buffer, to which the unread bytes move. Reads of at least a
    /// quarter of a bulk buffer take a pooled bulk buffer.
    pub fn reserve(&mut self, additional: usize) {
        if self.buf.try_reclaim(additional) {
            return;
        }
        let need = self.buf.len() + additional;
        let bulk = additional >= BULK / 4 && need <= BULK;
        let mut next = if bulk {
            self.pool
                .take()
                .unwrap_or_else(|| BytesMut::with_capacity(BULK))
        } else {
            BytesMut::with_capacity(need)
        };
        next.extend_from_slice(&self.buf);
        let old = std::mem::replace(&mut self.buf, next);
        if std::mem::replace(&mut self.bulk, bulk) {
            self.pool.give(old);
        }
    }

    /// Lets go of the buffer when it holds nothing (an idle connection).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            let old = std::mem::take(&mut self.buf);
            if std::mem::take(&mut self.bulk) {
                self.pool.give(old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static Pool {
        Box::leak(Box::new(Pool::new()))
    }

    #[test]
    fn a_buffer_whose_packets_are_gone_is_reused_in_place() {
        let mut r = ReadBuf::with_pool(pool());
        r.reserve(BULK / 2);
        let start = r.buf.as_ptr();
        r.buf.extend_from_slice(&vec![1u8; BULK - 50]);
        let packet = r.buf.split_to(BULK - 150).freeze();
        drop(packet);
        r.reserve(BULK / 2);
        assert_eq!(
            r.buf.as_ptr(),
            start,
            "same allocation, unread bytes moved to the front"
        );
        assert_eq!(&r.buf[..], &[1u8; 100][..]);
    }

    #[test]
    fn a_replaced_bulk_buffer_serves_again_once_its_packets_are_dropped() {
        let pool = pool();
        let mut r = ReadBuf::with_pool(pool);
        r.reserve(BULK / 2);
        let first = r.buf.as_ptr();
        r.buf.extend_from_slice(&vec![2u8; BULK - 10]);
        // A packet still queued on a channel keeps the first buffer alive.
        let queued = r.buf.split_to(BULK - 20).freeze();
        r.reserve(BULK / 2);
        assert_ne!(r.buf.as_ptr(), first);
        assert_eq!(&r.buf[..], &[2u8; 10][..], "the unfinished packet moved");
        assert_eq!(pool.spare().len(), 1);
        // While the packet is alive the first buffer is not handed out.
        let mut other = ReadBuf::with_pool(pool);
        other.reserve(BULK / 2);
        assert_ne!(other.buf.as_ptr(), first);
        drop(queued);
        let mut again = ReadBuf::with_pool(pool);
        again.reserve(BULK / 2);
        assert_eq!(
            again.buf.as_ptr(),
            first,
            "the freed bulk buffer was reused"
        );
        assert!(again.buf.is_empty());
        assert!(again.buf.capacity() >= BULK);
        assert_eq!(pool.spare().len(), 0);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        let pool = pool();
        let mut held = Vec::new();
        let mut r = ReadBuf::with_pool(pool);
        for _ in 0..KEEP + 5 {
            r.reserve(BULK / 2);
            r.buf.extend_from_slice(&vec![3u8; BULK - 64]);
            held.push(r.buf.split().freeze());
        }
        assert_eq!(pool.spare().len(), KEEP);
    }

    #[test]
    fn small_reads_do_not_take_bulk_buffers() {
        let mut r = ReadBuf::with_pool(pool());
        r.reserve(16 * 1024);
        assert!(r.buf.capacity() < BULK);
        r.buf.extend_from_slice(b"abc");
        r.release_if_empty();
        assert_eq!(&r.buf[..], b"abc", "a buffer with unread bytes is kept");
        r.buf.clear();
        r.release_if_empty();
        assert_eq!(r.buf.capacity(), 0);
    }
}
