//! The transport: the socket, packets, sequence numbers and keys in use.
//! It alone decides when a packet may be sealed: while our key exchange
//! runs (our KEXINIT sealed, our NEWKEYS not yet) only key-exchange
//! messages are sealed, other messages wait in order, and channel data is
//! handed back to its caller.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ssh::socket::Socket;

use super::super::mux::Chunk;
use super::super::outbox::{self, Outbox};
use super::super::packet::Direction;
use super::super::readbuf::ReadBuf;
use super::super::wire::msg;
use super::{Fail, VERSION, proto};

/// Longest version line (RFC 4253 §4.2: 255 with CR LF), and how many
/// other lines a server may send before it.
const MAX_VERSION_LINE: usize = 255;
const MAX_PRE_BANNER_LINES: usize = 20;
/// Stop taking channel data from the application while this much waits
/// to be written to the socket.
pub(super) const WRITE_HIGH: usize = 256 * 1024;
/// First and largest read from the socket.
const READ_MIN: usize = 16 * 1024;
pub const READ_MAX: usize = 512 * 1024;
/// Channel data packets from this size (payload) are passed on whole, to be
/// sealed again in place by a relay, and not copied.
pub(super) const FRAME_MIN: usize = 9 + 8192;
/// What one message held back during a key exchange costs beside its
/// bytes (its allocation and queue slot); counted toward
/// [`super::READ_STOP`], so a peer that never answers our KEXINIT cannot
/// make the queue grow by sending requests whose replies wait.
const DEFERRED_OVERHEAD: usize = 64;

/// Exchanges version lines. Returns the peer's line (without CR LF).
pub async fn version_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    server: bool,
) -> Result<Vec<u8>, String> {
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

/// A packet opened by [`Transport::next_packet`].
pub(super) enum Packet {
    /// A message's payload.
    Payload(Bytes),
    /// A big CHANNEL_DATA packet, whole (see [`Chunk::Frame`]), and where
    /// its payload is: the caller takes it as is, or as a payload.
    Frame(BytesMut, Range<usize>),
}

pub(super) struct Transport {
    pub(super) stream: Socket,
    rbuf: ReadBuf,
    /// Bytes the next read asks for (see [`Transport::read_some`]).
    read_chunk: usize,
    need: Option<usize>,
    pub(super) out: Outbox,
    open: Direction,
    pub(super) seal: Direction,
    pub(super) seq_in: u32,
    seq_out: u32,
    /// Packets received since the connection started.
    pub(super) packets_in: u64,
    /// Packets opened and sealed under the current keys (see
    /// [`super::Settings::packets_per_key`]).
    pub(super) packets_in_key: u64,
    pub(super) packets_out_key: u64,
    packets_per_key: u64,
    /// Why sealing stopped; set, the connection ends before writing more.
    pub(super) broken: Option<&'static str>,
    pub(super) bytes_since_kex: u64,
    /// Bytes written to the socket, in all.
    pub(super) written: u64,
    /// Bytes read from the socket, in all.
    pub(super) read: u64,
    /// Messages held back while [`Transport::holding`].
    deferred: VecDeque<Vec<u8>>,
    /// What [`Transport::deferred`] holds, with [`DEFERRED_OVERHEAD`] each.
    pub(super) deferred_bytes: usize,
    /// Our KEXINIT is sealed and our NEWKEYS is not: only key-exchange
    /// messages may be sealed now.
    holding: bool,
}

impl Transport {
    pub(super) fn new(stream: Socket, packets_per_key: u64) -> Transport {
        Transport {
            stream,
            rbuf: ReadBuf::default(),
            read_chunk: READ_MIN,
            need: None,
            out: Outbox::default(),
            open: Direction::plain(),
            seal: Direction::plain(),
            seq_in: 0,
            seq_out: 0,
            packets_in: 0,
            packets_in_key: 0,
            packets_out_key: 0,
            packets_per_key,
            broken: None,
            bytes_since_kex: 0,
            written: 0,
            read: 0,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            holding: false,
        }
    }

    /// Reads what the socket holds, in one system call when it fits. The
    /// read size starts small (an idle connection keeps a small buffer) and
    /// doubles up to [`READ_MAX`] while reads fill it, so bulk transfers take
    /// many packets per call.
    pub(super) fn read_some(&mut self) -> Result<(), Fail> {
        if self.rbuf.buf.capacity() - self.rbuf.buf.len() < self.read_chunk / 2 {
            self.rbuf.reserve(self.read_chunk);
        }
        let spare = self.rbuf.buf.capacity() - self.rbuf.buf.len();
        match self.stream.try_read_buf(&mut self.rbuf.buf) {
            Ok(0) => Err(Fail::Eof),
            Ok(n) => {
                self.read += n as u64;
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
    pub(super) fn pending(&self) -> usize {
        self.out.len()
    }

    /// Whether the connection may take commands (channel data above all)
    /// from the application now.
    pub(super) fn may_take_commands(&self) -> bool {
        !self.holding && self.pending() < WRITE_HIGH
    }

    pub(super) fn write_some(&mut self) -> Result<(), Fail> {
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

    /// Writes everything sealed, within `limit` (for a DISCONNECT).
    pub(super) async fn flush(&mut self, limit: Duration) {
        if self.broken.is_some() {
            return;
        }
        let all = self.out.take_all();
        let _ = tokio::time::timeout(limit, self.stream.write_all(&all)).await;
    }

    /// Opens the next whole packet in the read buffer, if there is one.
    pub(super) fn next_packet(&mut self) -> Result<Option<Packet>, Fail> {
        let size = match self.need {
            Some(n) => n,
            None => {
                let b = &self.rbuf.buf;
                if b.len() < 4 {
                    return Ok(None);
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
            return Ok(None);
        }
        self.need = None;
        if self.packets_in_key >= self.packets_per_key {
            return Err(proto("sequence number would wrap under one key"));
        }
        let mut packet = self.rbuf.buf.split_to(size);
        let range = self.open.open(self.seq_in, &mut packet)?;
        self.seq_in = self.seq_in.wrapping_add(1);
        self.packets_in_key += 1;
        self.bytes_since_kex += size as u64;
        self.packets_in += 1;
        if range.len() >= FRAME_MIN && packet[range.start] == msg::CHANNEL_DATA {
            return Ok(Some(Packet::Frame(packet, range)));
        }
        let payload = packet.freeze().slice(range);
        if payload.is_empty() {
            return Err(proto("empty message"));
        }
        Ok(Some(Packet::Payload(payload)))
    }

    /// Seals `payload` into the write buffer now: key-exchange messages
    /// (allowed while holding), and DISCONNECT.
    pub(super) fn seal_now(&mut self, payload: &[u8]) {
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
    /// not, the connection is marked to end (see [`Transport::broken`]).
    pub(super) fn may_seal(&mut self) -> bool {
        if self.broken.is_none() && self.packets_out_key >= self.packets_per_key {
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

    /// Sends a message: sealed now, or held back (in order) while our key
    /// exchange runs, counted toward [`super::READ_STOP`].
    pub(super) fn send(&mut self, payload: Vec<u8>) {
        if self.holding && !msg::is_kex(payload[0]) {
            self.deferred_bytes += payload.len() + DEFERRED_OVERHEAD;
            self.deferred.push_back(payload);
        } else {
            self.seal_now(&payload);
        }
    }

    /// Seals channel data of `n` bytes after `head` (its message type,
    /// channel and length; `ext`: extended data). Big frames are sealed in
    /// place. `Err` hands the data back while holding: the caller keeps it
    /// for later. Data after a failed seal is dropped: the connection ends.
    pub(super) fn seal_data(
        &mut self,
        head: &[u8],
        ext: bool,
        data: Chunk,
        n: usize,
    ) -> Result<(), Chunk> {
        if self.holding {
            return Err(data);
        }
        if !self.may_seal() {
            return Ok(());
        }
        let rest = match data {
            Chunk::Frame {
                mut packet,
                data: range,
            } if !ext => {
                if self
                    .seal
                    .seal_frame(self.seq_out, head, &mut packet, range.clone())
                {
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
        let sealed = match rest {
            Some(data) => self.seal.seal(self.seq_out, head, &data, self.out.tail()),
            None => true,
        };
        if sealed {
            self.sealed(n);
        } else {
            self.broken = Some("sealing a packet failed");
        }
        Ok(())
    }

    /// Our KEXINIT was sealed: hold everything else back.
    pub(super) fn hold(&mut self) {
        self.holding = true;
    }

    /// Our NEWKEYS was sealed: new keys out, and `first` (EXT_INFO or the
    /// service request after the first exchange) sealed before what was
    /// held back.
    pub(super) fn switch_out(&mut self, seal: Direction, strict: bool, first: Option<Vec<u8>>) {
        self.seal = seal;
        self.packets_out_key = 0;
        if strict {
            self.seq_out = 0;
        }
        self.holding = false;
        if let Some(m) = first {
            self.seal_now(&m);
        }
        while let Some(m) = self.deferred.pop_front() {
            self.seal_now(&m);
        }
        self.deferred_bytes = 0;
    }

    /// The peer's NEWKEYS arrived: new keys in.
    pub(super) fn switch_in(&mut self, open: Direction, strict: bool) {
        self.open = open;
        self.packets_in_key = 0;
        if strict {
            self.seq_in = 0;
        }
    }

    /// Whether the current keys protected half the packets they may.
    pub(super) fn key_half_used(&self) -> bool {
        self.packets_in_key.max(self.packets_out_key) >= self.packets_per_key / 2
    }

    /// Idle connections keep no buffers (a busy one reuses them).
    /// Whether the read buffer or the outbox holds an allocation that
    /// [`Transport::release_if_idle`] could give back.
    pub(super) fn holds_buffers(&self) -> bool {
        self.rbuf.buf.capacity() > 0 || self.out.holds_memory()
    }

    pub(super) fn release_if_idle(&mut self) {
        self.out.release_if_empty();
        self.rbuf.release_if_empty();
    }
}
