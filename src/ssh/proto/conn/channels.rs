//! Channels (RFC 4254 §5): the table, and what the peer sends about them:
//! opens and their answers, windows, data, EOF and close (each once),
//! requests, and the replies to our global requests. What the application
//! asks for is in [`super::commands`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::super::mux::{
    ChanHandle, ChanShared, Chunk, Cmd, In, OpenRefused, OpenReply, OpenRequest, Pushed, WINDOW,
    Wakes, counts,
};
use super::super::wire::{Writer, msg, open_failure};
use super::msg::{ChanReq, OpenKind};
use super::transport::FRAME_MIN;
use super::{Conn, Events, ExecTask, Fail, Incoming, proto};
use crate::protocol::limits::MAX_PACKET_SIZE;

/// Channels one connection may have open at once.
const MAX_CHANNELS: usize = 4096;
/// Smallest maximum packet size we accept from a peer for a channel:
/// below it each byte of data costs dozens on the wire (OpenSSH offers
/// 16 KiB and more; RFC 4253 requires every peer to take 32 KiB packets).
pub(super) const MIN_PEER_PACKET: u32 = 1024;

#[derive(PartialEq, Eq)]
pub(super) enum ChanKind {
    /// We asked to open; waiting for the peer.
    Opening,
    /// The peer asked; waiting for the application.
    Incoming,
    Open,
    /// A server session channel (exec), handled here.
    Session,
}

pub(super) struct Entry {
    pub(super) shared: Arc<ChanShared>,
    pub(super) remote_id: u32,
    pub(super) kind: ChanKind,
    pub(super) reply: Option<OpenReply>,
    /// Window we still grant the peer.
    pub(super) local_window: u32,
    /// Largest data packet we told the peer it may send on this channel.
    pub(super) local_max: u32,
    pub(super) sent_eof: bool,
    pub(super) sent_close: bool,
    /// The peer sent EOF, and an exit status or signal: each once.
    got_eof: bool,
    got_exit: bool,
    /// A server session running a command: what the peer sends on it has
    /// no reader (commands take no input), so it is counted and dropped.
    pub(super) input_dropped: bool,
}

impl Entry {
    pub(super) fn new(
        shared: Arc<ChanShared>,
        remote_id: u32,
        kind: ChanKind,
        reply: Option<OpenReply>,
        local_max: u32,
    ) -> Entry {
        Entry {
            shared,
            remote_id,
            kind,
            reply,
            local_window: WINDOW,
            local_max,
            sent_eof: false,
            sent_close: false,
            got_eof: false,
            got_exit: false,
            input_dropped: false,
        }
    }

    /// Whether data, EOF and requests from the application may go out.
    pub(super) fn open_for_us(&self) -> bool {
        self.kind == ChanKind::Open && !self.sent_eof && !self.sent_close
    }
}

#[derive(Default)]
pub(super) struct Channels {
    pub(super) table: HashMap<u32, Entry>,
    next_id: u32,
    /// Channels closed while their reader had not taken everything yet.
    pub(super) closed_waiting: Vec<Weak<ChanShared>>,
    /// Our global requests awaiting a reply, in order (`None`: nobody waits).
    pub(super) pending_globals: VecDeque<Option<oneshot::Sender<bool>>>,
}

impl Channels {
    pub(super) fn alloc_id(&mut self) -> Option<u32> {
        if self.table.len() >= MAX_CHANNELS {
            return None;
        }
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.table.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Counts `len` bytes of channel data against channel `id`'s window;
    /// returns where they go (nowhere on a session channel, or one we
    /// closed).
    pub(super) fn data_to(&mut self, id: u32, len: usize) -> Result<Option<&ChanShared>, Fail> {
        let Some(e) = self
            .table
            .get_mut(&id)
            .filter(|e| matches!(e.kind, ChanKind::Open | ChanKind::Session))
        else {
            return Err(proto("data on a channel that is not open"));
        };
        if len > e.local_max as usize {
            return Err(proto(format!(
                "peer sent {len} bytes in one packet on channel {id}, past the {} announced",
                e.local_max
            )));
        }
        if len as u32 > e.local_window {
            return Err(proto(format!(
                "peer sent {len} bytes past channel {id}'s window"
            )));
        }
        e.local_window -= len as u32;
        counts::count_in(len);
        if e.kind == ChanKind::Session || e.input_dropped || e.sent_close {
            return Ok(None);
        }
        Ok(Some(&e.shared))
    }

    /// The connection ended: every channel and opener learns it.
    pub(super) fn close_all(&mut self) {
        // No unpin round comes after this: what readers have not taken yet
        // gets its own buffers now.
        for w in self.closed_waiting.drain(..) {
            if let Some(shared) = w.upgrade() {
                shared.unpin_all();
            }
        }
        for (_, e) in self.table.drain() {
            e.shared.unpin_all();
            e.shared.close();
            if let Some(reply) = e.reply {
                let _ = reply.send(Err(OpenRefused::ours("connection closed")));
            }
        }
    }

    /// One unpin round over the channels (see [`super::Conn::unpin`]);
    /// whether another is needed.
    pub(super) fn unpin_waiting(&mut self) -> bool {
        let mut again = false;
        for e in self.table.values() {
            again |= e.shared.unpin_waiting();
        }
        // A closed channel gets nothing new: kept until its data is copied.
        self.closed_waiting
            .retain(|w| w.upgrade().is_some_and(|shared| shared.unpin_waiting()));
        again | !self.closed_waiting.is_empty()
    }
}

/// CHANNEL_OPEN_FAILURE to the peer's channel `remote`.
pub(super) fn open_failure_msg(remote: u32, code: u32, text: &str) -> Vec<u8> {
    Writer::new(msg::CHANNEL_OPEN_FAILURE)
        .u32(remote)
        .u32(code)
        .string(text)
        .string("")
        .finish()
}

fn confirmation(remote: u32, id: u32) -> Vec<u8> {
    Writer::new(msg::CHANNEL_OPEN_CONFIRMATION)
        .u32(remote)
        .u32(id)
        .u32(WINDOW)
        .u32(MAX_PACKET_SIZE)
        .finish()
}

impl<E: Events> Conn<E> {
    pub(super) fn on_channel_open(
        &mut self,
        kind: OpenKind<'_>,
        remote: u32,
        window: u32,
        max: u32,
    ) -> Result<(), Fail> {
        let request = match (kind, self.server) {
            (OpenKind::Session, true) => None,
            (OpenKind::DirectTcpip { host, port }, true) => Some(OpenRequest::DirectTcpip {
                host: host.to_string(),
                port,
            }),
            (OpenKind::ForwardedTcpip { address, port }, false) => {
                Some(OpenRequest::ForwardedTcpip {
                    address: address.to_string(),
                    port,
                })
            }
            (OpenKind::P2p { host, port }, _) => Some(OpenRequest::P2p {
                host: host.to_string(),
                port,
            }),
            (OpenKind::Malformed("p2p@warren", e), _) => return Err(e.into()),
            (OpenKind::Malformed("direct-tcpip", e), true)
            | (OpenKind::Malformed("forwarded-tcpip", e), false) => return Err(e.into()),
            _ => {
                let m = open_failure_msg(
                    remote,
                    open_failure::UNKNOWN_CHANNEL_TYPE,
                    "unknown channel type",
                );
                self.send(m);
                return Ok(());
            }
        };
        if max < MIN_PEER_PACKET {
            let text = format!("maximum packet size {max} is below {MIN_PEER_PACKET}");
            let m = open_failure_msg(remote, open_failure::ADMINISTRATIVELY_PROHIBITED, &text);
            self.send(m);
            return Ok(());
        }
        let Some(id) = self.ch.alloc_id() else {
            let m = open_failure_msg(remote, open_failure::RESOURCE_SHORTAGE, "too many channels");
            self.send(m);
            return Ok(());
        };
        let shared = ChanShared::new(window, max);
        let kind = if request.is_some() {
            ChanKind::Incoming
        } else {
            ChanKind::Session
        };
        let entry = Entry::new(shared.clone(), remote, kind, None, MAX_PACKET_SIZE);
        self.ch.table.insert(id, entry);
        match request {
            None => self.send(confirmation(remote, id)),
            Some(req) => {
                let handle = ChanHandle::new(id, shared, self.tx.clone());
                self.events.channel_open(req, Incoming { handle });
            }
        }
        Ok(())
    }

    pub(super) fn on_open_confirmation(
        &mut self,
        id: u32,
        remote: u32,
        window: u32,
        max: u32,
    ) -> Result<(), Fail> {
        let e = self
            .ch
            .table
            .get_mut(&id)
            .filter(|e| e.kind == ChanKind::Opening);
        let Some(e) = e else {
            return Err(proto("confirmation for a channel never opened"));
        };
        e.remote_id = remote;
        e.kind = ChanKind::Open;
        if max < MIN_PEER_PACKET {
            if let Some(reply) = e.reply.take() {
                let _ = reply.send(Err(OpenRefused::ours(format!(
                    "peer's maximum packet size {max} is below {MIN_PEER_PACKET}"
                ))));
            }
            self.command(Cmd::Close(id));
            return Ok(());
        }
        e.shared.set_remote(window, max);
        let shared = e.shared.clone();
        if let Some(reply) = e.reply.take()
            && reply.send(Ok((id, shared))).is_err()
        {
            // The opener gave up: close what it will never use.
            self.command(Cmd::Close(id));
        }
        Ok(())
    }

    pub(super) fn on_open_failure(&mut self, id: u32, code: u32, text: &[u8]) -> Result<(), Fail> {
        match self.ch.table.remove(&id) {
            Some(e) if e.kind == ChanKind::Opening => {
                if let Some(reply) = e.reply {
                    let text = if text.is_empty() {
                        format!("refused (code {code})")
                    } else {
                        String::from_utf8_lossy(text).into_owned()
                    };
                    let _ = reply.send(Err(OpenRefused {
                        code: Some(code),
                        text,
                    }));
                }
                Ok(())
            }
            _ => Err(proto("open failure for a channel never opened")),
        }
    }

    pub(super) fn on_window_adjust(&mut self, id: u32, n: u32) -> Result<(), Fail> {
        if let Some(e) = self.ch.table.get(&id)
            && !e.shared.add_window(n)
        {
            return Err(proto("window adjust overflows the window"));
        }
        Ok(())
    }

    /// Channel data within the payload `p`: big chunks keep pointing into
    /// the packet; small ones are copied so that they do not pin a whole
    /// read buffer.
    pub(super) fn on_data(
        &mut self,
        p: &Bytes,
        id: u32,
        ext: bool,
        data: &[u8],
    ) -> Result<(), Fail> {
        let offset = data.as_ptr() as usize - p.as_ptr() as usize;
        let len = data.len();
        let Some(to) = self.ch.data_to(id, len)? else {
            return Ok(());
        };
        let big = len >= FRAME_MIN - 9;
        let bytes = if big {
            p.slice(offset..offset + len)
        } else {
            Bytes::copy_from_slice(&p[offset..offset + len])
        };
        if ext {
            to.push(In::Ext(bytes));
        } else {
            let pushed = to.push_data(bytes.into());
            self.pushed(id, pushed);
        }
        if big {
            self.unpin_later();
        }
        Ok(())
    }

    /// The window to grant back for data passed on directly (see
    /// [`super::super::mux::Direct`]), granted now, as its reader would.
    fn pushed(&mut self, id: u32, pushed: Pushed) {
        if let Pushed::Direct(Some(n)) = pushed {
            self.cmd_adjust(id, n);
        }
    }

    /// A big CHANNEL_DATA packet taken whole (see [`Chunk::Frame`]).
    pub(super) fn on_data_frame(
        &mut self,
        id: u32,
        len: usize,
        frame: impl FnOnce() -> Chunk,
        wakes: &mut Wakes,
    ) -> Result<(), Fail> {
        if let Some(to) = self.ch.data_to(id, len)? {
            let pushed = to.push_data_waking(frame(), wakes);
            self.pushed(id, pushed);
            self.unpin_later();
        }
        Ok(())
    }

    pub(super) fn on_eof(&mut self, id: u32) -> Result<(), Fail> {
        // Once per channel: repeats would queue without bound where
        // nobody reads (a session channel, or one we closed).
        if let Some(e) = self.ch.table.get_mut(&id) {
            if std::mem::replace(&mut e.got_eof, true) {
                return Err(proto(format!("second CHANNEL_EOF on channel {id}")));
            }
            if e.kind != ChanKind::Session && !e.sent_close {
                e.shared.push(In::Eof);
            }
        }
        Ok(())
    }

    pub(super) fn on_close(&mut self, id: u32) -> Result<(), Fail> {
        let Some(e) = self.ch.table.remove(&id) else {
            return Err(proto("close of an unknown channel"));
        };
        e.shared.close();
        if e.shared.has_queued() {
            self.ch.closed_waiting.push(Arc::downgrade(&e.shared));
            self.unpin_later();
        }
        if !e.sent_close {
            self.send(Writer::new(msg::CHANNEL_CLOSE).u32(e.remote_id).finish());
        }
        Ok(())
    }

    pub(super) fn on_request_reply(&mut self, ok: bool) -> Result<(), Fail> {
        match self.ch.pending_globals.pop_front() {
            Some(Some(reply)) => {
                let _ = reply.send(ok);
                Ok(())
            }
            Some(None) => Ok(()),
            None => Err(proto("reply to a request never sent")),
        }
    }

    /// A channel request. Both sides take an exit status or signal once
    /// per channel; the server runs `exec` and `shell` on its session
    /// channels and accepts `pty-req` there. Everything else fails.
    pub(super) async fn on_channel_request(
        &mut self,
        id: u32,
        want: bool,
        req: ChanReq<'_>,
    ) -> Result<(), Fail> {
        let Some(e) = self.ch.table.get_mut(&id) else {
            return Err(proto("request on unknown channel"));
        };
        let remote = e.remote_id;
        if self.server {
            if e.kind == ChanKind::Session && !e.sent_close {
                return self.session_request(id, remote, want, req).await;
            }
        } else if matches!(req.name(), "exit-status" | "exit-signal") {
            if std::mem::replace(&mut e.got_exit, true) {
                return Err(proto(format!("second exit status on channel {id}")));
            }
            match req {
                ChanReq::ExitStatus(status) if !e.sent_close => {
                    e.shared.push(In::ExitStatus(status));
                }
                ChanReq::Malformed(_, err) if !e.sent_close => return Err(err.into()),
                _ => {}
            }
        }
        if want {
            self.send(Writer::new(msg::CHANNEL_FAILURE).u32(remote).finish());
        }
        Ok(())
    }

    /// A request on one of the server's open session channels.
    async fn session_request(
        &mut self,
        id: u32,
        remote: u32,
        want: bool,
        req: ChanReq<'_>,
    ) -> Result<(), Fail> {
        let command = match req {
            ChanReq::Exec(command) => command,
            ChanReq::Shell => "",
            ChanReq::Malformed("exec", e) => return Err(e.into()),
            // Accepted so that a plain `ssh relay` shows the help text
            // rather than a pty error; no shell ever runs.
            ChanReq::PtyReq => {
                if want {
                    self.send(Writer::new(msg::CHANNEL_SUCCESS).u32(remote).finish());
                }
                return Ok(());
            }
            _ => {
                if want {
                    self.send(Writer::new(msg::CHANNEL_FAILURE).u32(remote).finish());
                }
                return Ok(());
            }
        };
        let out: ExecTask = match self.events.exec_task(command) {
            Some(task) => task,
            None => Box::pin(std::future::ready(self.events.exec(command).await)),
        };
        if want {
            self.send(Writer::new(msg::CHANNEL_SUCCESS).u32(remote).finish());
        }
        self.exec_reply(id, out);
        Ok(())
    }

    /// Sends a command's output, once ready, like any channel data (within
    /// the peer's window), then its exit status, EOF and close.
    fn exec_reply(&mut self, id: u32, out: ExecTask) {
        let Some(e) = self.ch.table.get_mut(&id) else {
            return;
        };
        e.kind = ChanKind::Open;
        e.input_dropped = true;
        let handle = ChanHandle::new(id, e.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            let out = out.await;
            let ok = handle.send(Bytes::from(out.stdout), false).await.is_ok()
                && handle.send(Bytes::from(out.stderr), true).await.is_ok();
            if ok {
                handle.tx.send(Cmd::ExitStatus {
                    id,
                    status: out.status,
                });
                handle.eof();
            }
            // Dropping the handle closes the channel.
        });
    }
}
