//! From opened packets to handlers: the gates (initial key exchange, a
//! running key exchange, before authentication, what each side reads),
//! then one parse into a [`Msg`] and one handler per message.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::super::mux::{Chunk, Wakes};
use super::super::wire::{Writer, msg};
use super::msg::{self as m, Msg};
use super::transport::Packet;
use super::{Conn, Events, Fail, proto};

impl<E: Events> Conn<E> {
    /// Handles every whole packet the read buffer holds. Big data packets
    /// passed on directly to another connection wake it once, after the
    /// last of them ([`Wakes`]), or before any other message is handled.
    pub(super) async fn process(&mut self) -> Result<(), Fail> {
        let mut wakes = Wakes::default();
        while let Some(packet) = self.t.next_packet()? {
            self.heard = true;
            let payload = match packet {
                Packet::Payload(p) => p,
                Packet::Frame(packet, range) => {
                    match self.data_frame(packet, range.clone(), &mut wakes)? {
                        None => continue,
                        Some(packet) => packet.freeze().slice(range),
                    }
                }
            };
            wakes.flush();
            self.handle(payload).await?;
        }
        Ok(())
    }

    /// Takes a big CHANNEL_DATA packet whole (see [`Chunk::Frame`]) outside
    /// a key exchange; hands back any other packet for [`Conn::handle`].
    fn data_frame(
        &mut self,
        packet: BytesMut,
        payload: Range<usize>,
        wakes: &mut Wakes,
    ) -> Result<Option<BytesMut>, Fail> {
        let in_kex = !self.kx.first_kex_done || self.kx.peer_in_kex();
        let Some((id, len)) = m::data_header(&packet[payload.clone()]) else {
            return Ok(Some(packet));
        };
        // Anything unusual takes the common path, with its checks.
        if in_kex || !self.auth.authed || len.checked_add(9) != Some(payload.len()) {
            return Ok(Some(packet));
        }
        let frame = || Chunk::Frame {
            packet,
            data: payload.start + 9..payload.end,
        };
        self.on_data_frame(id, len, frame, wakes)?;
        Ok(None)
    }

    /// The gates every message passes, by its type, before it is parsed.
    fn gate(&mut self, t: u8) -> Result<Gate, Fail> {
        // During the first key exchange only kex messages are allowed under
        // strict kex (and KEXINIT must come first).
        if !self.kx.first_kex_done {
            let in_kex = matches!(
                t,
                msg::KEXINIT | msg::KEX_ECDH_INIT | msg::KEX_ECDH_REPLY | msg::NEWKEYS
            );
            if !in_kex && (self.kx.known_strict() || !msg::is_transport_generic(t)) {
                return Err(proto(format!(
                    "message {t} during the initial key exchange"
                )));
            }
        }
        if self.kx.skip_guess(t) {
            return Ok(Gate::Skip);
        }
        // Once the peer sent KEXINIT it may only send kex messages until NEWKEYS.
        if self.kx.peer_in_kex() && !msg::is_kex(t) {
            return Err(proto(format!("message {t} during key exchange")));
        }
        if msg::is_kex(t) {
            return Ok(Gate::Read);
        }
        if self.server {
            self.server_gate(t)
        } else {
            self.client_gate(t)
        }
    }

    fn server_gate(&self, t: u8) -> Result<Gate, Fail> {
        let authed = self.auth.authed;
        match t {
            msg::SERVICE_REQUEST => Ok(Gate::Read),
            msg::USERAUTH_REQUEST if authed => Ok(Gate::Skip),
            msg::USERAUTH_REQUEST if !self.auth.service_accepted() => {
                Err(proto("USERAUTH_REQUEST before SERVICE_REQUEST"))
            }
            msg::USERAUTH_REQUEST => Ok(Gate::Read),
            _ if !authed => Err(proto(format!("message {t} before authentication"))),
            msg::GLOBAL_REQUEST..=msg::CHANNEL_FAILURE => Ok(Gate::Read),
            _ => Ok(Gate::Unimplemented),
        }
    }

    fn client_gate(&self, t: u8) -> Result<Gate, Fail> {
        let authed = self.auth.authed;
        match t {
            msg::EXT_INFO | msg::USERAUTH_BANNER => Ok(Gate::Read),
            msg::SERVICE_ACCEPT | msg::USERAUTH_SUCCESS | msg::USERAUTH_FAILURE if !authed => {
                Ok(Gate::Read)
            }
            _ if !authed => Err(proto(format!("message {t} before authentication"))),
            msg::GLOBAL_REQUEST..=msg::CHANNEL_FAILURE => Ok(Gate::Read),
            _ => Ok(Gate::Unimplemented),
        }
    }

    /// One message, past the gates: parsed once, then its handler.
    async fn handle(&mut self, p: Bytes) -> Result<(), Fail> {
        match self.gate(p[0])? {
            Gate::Read => {}
            Gate::Skip => return Ok(()),
            Gate::Unimplemented => return self.unimplemented(),
        }
        match m::parse(&p)? {
            Msg::Disconnect { text } => Err(Fail::Peer(String::from_utf8_lossy(text).into_owned())),
            Msg::Ignore | Msg::UserauthBanner | Msg::ChannelReply => Ok(()),
            Msg::KexInit(k) => self.kx.on_kexinit(&mut self.t, k),
            Msg::KexEcdhInit { q_c } => self.kx.on_ecdh_init(&mut self.t, q_c),
            Msg::KexEcdhReply { k_s, q_s, sig } => {
                self.kx.on_ecdh_reply(&mut self.t, k_s, q_s, sig)
            }
            Msg::NewKeys => self.kx.on_newkeys(&mut self.t),
            Msg::ServiceRequest { name } => self.on_service_request(name),
            Msg::ServiceAccept => self.send_userauth(),
            Msg::ExtInfo { server_sig_algs } => {
                self.on_ext_info(server_sig_algs);
                Ok(())
            }
            Msg::UserauthRequest {
                user,
                service,
                method,
            } => Box::pin(self.on_userauth_request(user, service, method)).await,
            Msg::UserauthSuccess => {
                self.on_userauth_success();
                Ok(())
            }
            Msg::UserauthFailure => Err(self.on_userauth_failure()),
            Msg::GlobalRequest { name, want, data } => {
                Box::pin(self.on_global_request(name, want, data)).await
            }
            Msg::RequestReply(ok) => self.on_request_reply(ok),
            Msg::ChannelOpen {
                kind,
                remote,
                window,
                max,
            } => self.on_channel_open(kind, remote, window, max),
            Msg::ChannelOpenConfirmation {
                id,
                remote,
                window,
                max,
            } => self.on_open_confirmation(id, remote, window, max),
            Msg::ChannelOpenFailure { id, code, text } => self.on_open_failure(id, code, text),
            Msg::WindowAdjust { id, n } => self.on_window_adjust(id, n),
            Msg::Data { id, ext, data } => self.on_data(&p, id, ext, data),
            Msg::Eof { id } => self.on_eof(id),
            Msg::Close { id } => self.on_close(id),
            // The application's futures (key checks, registration, commands)
            // run boxed: inline they would make every connection's task,
            // idle ones too, as large as the largest of them.
            Msg::ChannelRequest { id, want, req } => {
                Box::pin(self.on_channel_request(id, want, req)).await
            }
            Msg::Unknown => self.unimplemented(),
        }
    }

    /// A global request: only port forwarding is put to the application
    /// (a client's answers `false`); the answer goes out if wanted.
    async fn on_global_request(&mut self, name: &str, want: bool, data: &[u8]) -> Result<(), Fail> {
        let ok = match name {
            "tcpip-forward" | "cancel-tcpip-forward" => {
                self.events.global_request(name, data).await
            }
            _ => false,
        };
        if want {
            self.send(vec![if ok {
                msg::REQUEST_SUCCESS
            } else {
                msg::REQUEST_FAILURE
            }]);
        }
        Ok(())
    }

    /// A message this side does not read (RFC 4253 §11.4).
    fn unimplemented(&mut self) -> Result<(), Fail> {
        let seq = self.t.seq_in.wrapping_sub(1);
        self.send(Writer::new(msg::UNIMPLEMENTED).u32(seq).finish());
        Ok(())
    }
}

/// What the gates decided about a message.
enum Gate {
    Read,
    /// Dropped unread (a wrong kex guess, a login after the login).
    Skip,
    Unimplemented,
}
