//! What the application asks of the connection ([`Cmd`]), one function
//! per command. Channel data is sealed by the [`super::transport`], which
//! hands it back while our key exchange runs.

use tokio::sync::oneshot;

use bytes::BytesMut;

use super::super::mux::{
    ChanShared, Chunk, Cmd, OpenRefused, OpenReply, SEND_PACKET, WINDOW, counts,
};
use super::super::wire::{Writer, msg, open_failure};
use super::channels::{ChanKind, Entry, open_failure_msg};
use super::transport::FRAME_MIN;
use super::{Conn, Events};
use crate::protocol::limits::MAX_PACKET_SIZE;

/// Room a joined packet leaves before its data, to be sealed in place:
/// length, padding length and the longest data header (extended data).
const JOIN_HEAD: usize = 4 + 1 + 13;
/// And after it: the padding (at most a cipher block and 3) and the tag.
const JOIN_TAIL: usize = 64;
/// Data parts smaller than this are joined (see [`Conn::coalesce`]): the
/// size below which received data is copied out of its read buffer
/// ([`FRAME_MIN`] less the data header).
const JOIN_BELOW: usize = FRAME_MIN - 9;

impl<E: Events> Conn<E> {
    pub(super) fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Data { id, ext, data } => self.cmd_data(id, ext, data),
            Cmd::Adjust { id, n } => self.cmd_adjust(id, n),
            Cmd::Eof(id) => self.cmd_eof(id),
            Cmd::Close(id) => self.cmd_close(id),
            Cmd::Confirm(id) => self.cmd_confirm(id),
            Cmd::Refuse { id, code, text } => self.cmd_refuse(id, code, &text),
            Cmd::Open {
                kind,
                extra,
                max_packet,
                reply,
            } => self.cmd_open(kind, &extra, max_packet, reply),
            Cmd::Exec { id, command } => self.cmd_exec(id, &command),
            Cmd::ExitStatus { id, status } => self.cmd_exit_status(id, status),
            Cmd::Global { name, data, reply } => self.cmd_global(&name, &data, reply),
        }
    }

    fn cmd_data(&mut self, id: u32, ext: bool, data: Chunk) {
        let data = self.coalesce(id, ext, data);
        let n = data.len();
        if self.t.may_seal()
            && let Some(e) = self.ch.table.get(&id)
            && e.open_for_us()
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
            if let Err(data) = self.t.seal_data(head, ext, data, n) {
                // Held back by a key exchange: first in line afterwards,
                // still holding its share of the outbox budget.
                self.backlog.push_front(Cmd::Data { id, ext, data });
                return;
            }
            counts::count_out(n);
        }
        self.tx.space.add_permits(n);
    }

    /// Joins the small data queued for channel `id` right behind `data` to
    /// it, up to the peer's largest packet for the channel: a burst of
    /// small writes (an interactive session, a chatty protocol, a client
    /// that reads its socket in small pieces) leaves as fewer packets, so
    /// both ends open, wake and write less per byte. Only what is queued
    /// already: nothing waits for more, and a lone message leaves as it
    /// came. Only parts below [`JOIN_BELOW`], which were copied out of
    /// their read buffer on arrival and would be copied again to be
    /// sealed: joined, they are copied once and sealed in place, so
    /// joining adds no copy (a big frame keeps going whole, sealed in
    /// place). The window and outbox space were taken for each part by its
    /// sender, so the joined packet stays within both.
    fn coalesce(&mut self, id: u32, ext: bool, data: Chunk) -> Chunk {
        // Behind the backlog (older than the queue) or in a key exchange,
        // data goes as it is.
        if data.len() >= JOIN_BELOW || !self.backlog.is_empty() || !self.t.may_take_commands() {
            return data;
        }
        let Some(e) = self.ch.table.get(&id).filter(|e| e.open_for_us()) else {
            return data;
        };
        let max = (e.shared.lock().remote_max as usize).min(SEND_PACKET as usize);
        let room = |used: usize| max.saturating_sub(used).min(JOIN_BELOW - 1);
        let Some(next) = self.cmds.try_recv_data(id, ext, room(data.len())) else {
            return data;
        };
        // Room for a few more parts; more grows it.
        let guess = (4 * (data.len() + next.len())).min(max);
        let mut buf = BytesMut::with_capacity(JOIN_HEAD + guess + JOIN_TAIL);
        buf.resize(JOIN_HEAD, 0);
        buf.extend_from_slice(&data);
        buf.extend_from_slice(&next);
        while let Some(more) = self
            .cmds
            .try_recv_data(id, ext, room(buf.len() - JOIN_HEAD))
        {
            buf.extend_from_slice(&more);
        }
        let end = buf.len();
        buf.resize(end + JOIN_TAIL, 0);
        Chunk::Frame {
            packet: buf,
            data: JOIN_HEAD..end,
        }
    }

    pub(super) fn cmd_adjust(&mut self, id: u32, n: u32) {
        if let Some(e) = self.ch.table.get_mut(&id)
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

    fn cmd_eof(&mut self, id: u32) {
        if let Some(e) = self.ch.table.get_mut(&id)
            && e.open_for_us()
        {
            e.sent_eof = true;
            let m = Writer::new(msg::CHANNEL_EOF).u32(e.remote_id).finish();
            self.send(m);
        }
    }

    fn cmd_close(&mut self, id: u32) {
        let Some(e) = self.ch.table.get_mut(&id) else {
            return;
        };
        match e.kind {
            ChanKind::Incoming => {
                self.cmd_refuse(id, open_failure::ADMINISTRATIVELY_PROHIBITED, "refused")
            }
            ChanKind::Open | ChanKind::Session if !e.sent_close => {
                e.sent_close = true;
                let m = Writer::new(msg::CHANNEL_CLOSE).u32(e.remote_id).finish();
                self.send(m);
            }
            _ => {}
        }
    }

    fn cmd_confirm(&mut self, id: u32) {
        if let Some(e) = self.ch.table.get_mut(&id)
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

    fn cmd_refuse(&mut self, id: u32, code: u32, text: &str) {
        if self
            .ch
            .table
            .get(&id)
            .is_some_and(|e| e.kind == ChanKind::Incoming)
            && let Some(e) = self.ch.table.remove(&id)
        {
            e.shared.close();
            self.send(open_failure_msg(e.remote_id, code, text));
        }
    }

    fn cmd_open(&mut self, kind: &str, extra: &[u8], max_packet: u32, reply: OpenReply) {
        let Some(id) = self.ch.alloc_id() else {
            let _ = reply.send(Err(OpenRefused::ours("too many channels")));
            return;
        };
        let max_packet = max_packet.min(MAX_PACKET_SIZE);
        let shared = ChanShared::new(0, 0);
        let entry = Entry::new(shared, 0, ChanKind::Opening, Some(reply), max_packet);
        self.ch.table.insert(id, entry);
        let m = Writer::new(msg::CHANNEL_OPEN)
            .string(kind)
            .u32(id)
            .u32(WINDOW)
            .u32(max_packet)
            .raw(extra)
            .finish();
        self.send(m);
    }

    fn cmd_exec(&mut self, id: u32, command: &str) {
        if let Some(e) = self.ch.table.get(&id)
            && e.kind == ChanKind::Open
        {
            let m = Writer::new(msg::CHANNEL_REQUEST)
                .u32(e.remote_id)
                .string("exec")
                .bool(false)
                .string(command)
                .finish();
            self.send(m);
        }
    }

    fn cmd_exit_status(&mut self, id: u32, status: u32) {
        if let Some(e) = self.ch.table.get(&id)
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

    fn cmd_global(&mut self, name: &str, data: &[u8], reply: oneshot::Sender<bool>) {
        let m = Writer::new(msg::GLOBAL_REQUEST)
            .string(name)
            .bool(true)
            .raw(data)
            .finish();
        self.ch.pending_globals.push_back(Some(reply));
        self.send(m);
    }
}
