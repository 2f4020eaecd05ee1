//! Sealed packets waiting for the socket, in the order they were sealed.
//!
//! Most packets are sealed into one growing buffer (the tail). Channel data
//! that arrived alone in a packet on another connection is sealed in place
//! in that packet instead ([`super::packet::Direction::seal_frame`]) and
//! queued as it is, so a relayed byte is not copied between the two
//! connections; one vectored write sends frames and tail together.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// Most buffers one write hands to the kernel.
pub const MAX_SLICES: usize = 32;

#[derive(Default)]
pub struct Outbox {
    /// Queued before the tail: frames, and earlier tails they followed.
    queue: VecDeque<Bytes>,
    queued: usize,
    tail: Vec<u8>,
    /// Bytes of `tail` already written.
    tail_pos: usize,
}

impl Outbox {
    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.queued + self.tail.len() - self.tail_pos
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the next packet is sealed: after everything queued.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    /// Queues a packet sealed elsewhere, after everything so far.
    pub fn push_frame(&mut self, frame: Bytes) {
        if self.tail.len() > self.tail_pos {
            let pos = std::mem::take(&mut self.tail_pos);
            let earlier = Bytes::from(std::mem::take(&mut self.tail)).slice(pos..);
            self.queued += earlier.len();
            self.queue.push_back(earlier);
        }
        self.queued += frame.len();
        self.queue.push_back(frame);
    }

    /// Fills `iov` with what to write next, in order; returns how many.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut k = 0;
        for b in &self.queue {
            if k == iov.len() {
                return k;
            }
            iov[k] = IoSlice::new(b);
            k += 1;
        }
        if k < iov.len() && self.tail.len() > self.tail_pos {
            iov[k] = IoSlice::new(&self.tail[self.tail_pos..]);
            k += 1;
        }
        k
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            let m = n.min(front.len());
            front.advance(m);
            self.queued -= m;
            n -= m;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
        self.tail_pos = (self.tail_pos + n).min(self.tail.len());
        if self.tail_pos == self.tail.len() {
            self.tail.clear();
            self.tail_pos = 0;
        } else if self.tail_pos >= 64 * 1024 && self.tail_pos >= self.tail.len() - self.tail_pos {
            // Moving the unwritten rest to the front costs at most as much
            // as was written since the last move.
            self.tail.drain(..self.tail_pos);
            self.tail_pos = 0;
        }
    }

    /// Gives every queued frame a buffer of its own, for a socket that has
    /// stopped taking them: a frame sealed in place keeps the whole read
    /// buffer it arrived in alive (see `mux::UNPIN_AFTER`).
    pub fn unpin(&mut self) {
        for b in self.queue.iter_mut().filter(|b| !b.is_unique()) {
            *b = Bytes::copy_from_slice(b);
        }
    }

    /// Everything not yet written, in one buffer (for a last flush).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        for b in self.queue.drain(..) {
            all.extend_from_slice(&b);
        }
        all.extend_from_slice(&self.tail[self.tail_pos..]);
        *self = Outbox::default();
        all
    }

    /// Whether a buffer is allocated (see [`Outbox::release_if_empty`]).
    pub fn holds_memory(&self) -> bool {
        self.tail.capacity() > 0 || self.queue.capacity() > 0
    }

    /// Lets go of the buffers when nothing waits (an idle connection).
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            *self = Outbox::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(o: &mut Outbox, mut limit: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !o.is_empty() && limit > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let k = o.slices(&mut iov);
            let mut n = 0;
            for s in &iov[..k] {
                let take = s.len().min(limit - n);
                out.extend_from_slice(&s[..take]);
                n += take;
                if n == limit {
                    break;
                }
            }
            o.advance(n);
            limit -= n;
        }
        out
    }

    #[test]
    fn frames_and_tail_go_out_in_the_order_they_were_queued() {
        let mut o = Outbox::default();
        o.tail().extend_from_slice(b"ab");
        o.push_frame(Bytes::from_static(b"FRAME1"));
        o.tail().extend_from_slice(b"cd");
        o.push_frame(Bytes::from_static(b"FRAME2"));
        o.push_frame(Bytes::from_static(b"FRAME3"));
        o.tail().extend_from_slice(b"ef");
        assert_eq!(o.len(), 24);
        // Written a few bytes at a time, as a busy socket takes them.
        let mut out = Vec::new();
        while !o.is_empty() {
            out.extend(written(&mut o, 5));
        }
        assert_eq!(out, b"abFRAME1cdFRAME2FRAME3ef");
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn a_partly_written_tail_keeps_its_place_before_a_new_frame() {
        let mut o = Outbox::default();
        o.tail().extend_from_slice(b"0123456789");
        assert_eq!(written(&mut o, 4), b"0123");
        o.push_frame(Bytes::from_static(b"F"));
        o.tail().extend_from_slice(b"xy");
        assert_eq!(written(&mut o, 100), b"456789Fxy");
    }

    #[test]
    fn unpinned_frames_free_their_buffer_and_keep_their_place() {
        let mut o = Outbox::default();
        let mut buf = bytes::BytesMut::with_capacity(4096);
        buf.resize(4096, b'F');
        let frame = buf.split_to(2048).freeze();
        buf.clear();
        o.tail().extend_from_slice(b"head");
        o.push_frame(frame.slice(..6));
        o.tail().extend_from_slice(b"tail");
        drop(frame);
        assert_eq!(written(&mut o, 6), b"headFF");
        assert!(!buf.try_reclaim(4096), "the queued frame points into it");
        o.unpin();
        assert!(buf.try_reclaim(4096), "the frame has a buffer of its own");
        assert_eq!(written(&mut o, 100), b"FFFFtail");
    }

    #[test]
    fn take_all_returns_the_unwritten_rest() {
        let mut o = Outbox::default();
        o.push_frame(Bytes::from_static(b"frame"));
        o.tail().extend_from_slice(b"tail");
        assert_eq!(written(&mut o, 2), b"fr");
        assert_eq!(o.take_all(), b"ametail");
        assert!(o.is_empty());
    }
}
