//! Every message the connection task reads, parsed once into a typed
//! [`Msg`] that borrows from the payload. The dispatcher and the fuzz
//! targets use the same [`parse`], so fuzzing reaches the real parser.
//!
//! A message is read only as far as the connection needs it: fields it
//! never looks at (an IGNORE's text, a CHANNEL_SUCCESS's channel) are not
//! parsed, so a peer cannot end the connection with them.

use ssh_key::{Algorithm, PublicKey};

use super::super::wire::{Reader, WireError, msg};

/// One message, by type; the fields the connection reads.
#[derive(Debug)]
pub enum Msg<'a> {
    Disconnect {
        text: &'a [u8],
    },
    /// IGNORE, DEBUG and UNIMPLEMENTED: nothing to do.
    Ignore,
    /// The whole KEXINIT payload (it is hashed as sent).
    KexInit(&'a [u8]),
    KexEcdhInit {
        q_c: &'a [u8],
    },
    KexEcdhReply {
        k_s: &'a [u8],
        q_s: &'a [u8],
        sig: &'a [u8],
    },
    NewKeys,
    ServiceRequest {
        name: &'a str,
    },
    ServiceAccept,
    /// EXT_INFO: the one extension read, `server-sig-algs` (of the first 64).
    ExtInfo {
        server_sig_algs: Option<&'a str>,
    },
    UserauthRequest {
        user: &'a str,
        service: &'a str,
        method: Method<'a>,
    },
    UserauthFailure,
    UserauthSuccess,
    UserauthBanner,
    GlobalRequest {
        name: &'a str,
        want: bool,
        data: &'a [u8],
    },
    /// REQUEST_SUCCESS (`true`) or REQUEST_FAILURE.
    RequestReply(bool),
    ChannelOpen {
        kind: OpenKind<'a>,
        remote: u32,
        window: u32,
        max: u32,
    },
    ChannelOpenConfirmation {
        id: u32,
        remote: u32,
        window: u32,
        max: u32,
    },
    ChannelOpenFailure {
        id: u32,
        code: u32,
        text: &'a [u8],
    },
    WindowAdjust {
        id: u32,
        n: u32,
    },
    /// CHANNEL_DATA or, with `ext`, CHANNEL_EXTENDED_DATA (its type code
    /// is not read); `data` points into the payload.
    Data {
        id: u32,
        ext: bool,
        data: &'a [u8],
    },
    Eof {
        id: u32,
    },
    Close {
        id: u32,
    },
    ChannelRequest {
        id: u32,
        want: bool,
        req: ChanReq<'a>,
    },
    /// CHANNEL_SUCCESS and CHANNEL_FAILURE: nothing to do.
    ChannelReply,
    /// Any other type: answered with UNIMPLEMENTED.
    Unknown,
}

/// A USERAUTH_REQUEST's method.
#[derive(Debug)]
pub enum Method<'a> {
    Publickey {
        alg: &'a str,
        blob: &'a [u8],
        /// Present when the request is signed.
        sig: Option<&'a [u8]>,
    },
    /// "none" or anything else: answered with the list of what works.
    Other(&'a str),
}

/// A CHANNEL_OPEN's type, with the fields of the types Warren opens.
#[derive(Debug)]
pub enum OpenKind<'a> {
    Session,
    DirectTcpip {
        host: &'a str,
        port: u32,
    },
    ForwardedTcpip {
        address: &'a str,
        port: u32,
    },
    /// `p2p@warren`: signalling for a direct path (`crate::p2p`); the
    /// device (toward the relay) or controller (toward a device) and port.
    P2p {
        host: &'a str,
        port: u32,
    },
    /// A type Warren knows whose fields did not parse: a protocol error
    /// on the side that serves it, an unknown type on the other.
    Malformed(&'a str, WireError),
    /// Any other type: refused.
    Other,
}

/// A CHANNEL_REQUEST's type, with the fields Warren reads.
#[derive(Debug)]
pub enum ChanReq<'a> {
    Exec(&'a str),
    Shell,
    PtyReq,
    ExitStatus(u32),
    ExitSignal,
    /// `exec` or `exit-status` whose field did not parse: a protocol error
    /// only where that field is read.
    Malformed(&'a str, WireError),
    Other(&'a str),
}

impl ChanReq<'_> {
    /// The request type as sent.
    pub fn name(&self) -> &str {
        match self {
            ChanReq::Exec(_) => "exec",
            ChanReq::Shell => "shell",
            ChanReq::PtyReq => "pty-req",
            ChanReq::ExitStatus(_) => "exit-status",
            ChanReq::ExitSignal => "exit-signal",
            ChanReq::Malformed(k, _) | ChanReq::Other(k) => k,
        }
    }
}

/// Parses a message (its first byte is the type). An empty payload is an
/// error.
pub fn parse(p: &[u8]) -> Result<Msg<'_>, WireError> {
    let Some((&t, body)) = p.split_first() else {
        return Err(WireError("empty message"));
    };
    let mut r = Reader::new(body);
    Ok(match t {
        msg::DISCONNECT => {
            r.u32()?;
            Msg::Disconnect { text: r.string()? }
        }
        msg::IGNORE | msg::DEBUG | msg::UNIMPLEMENTED => Msg::Ignore,
        msg::KEXINIT => Msg::KexInit(p),
        msg::KEX_ECDH_INIT => Msg::KexEcdhInit { q_c: r.string()? },
        msg::KEX_ECDH_REPLY => Msg::KexEcdhReply {
            k_s: r.string()?,
            q_s: r.string()?,
            sig: r.string()?,
        },
        msg::NEWKEYS => Msg::NewKeys,
        msg::SERVICE_REQUEST => Msg::ServiceRequest { name: r.utf8()? },
        msg::SERVICE_ACCEPT => Msg::ServiceAccept,
        msg::EXT_INFO => ext_info(&mut r)?,
        msg::USERAUTH_REQUEST => userauth_request(&mut r)?,
        msg::USERAUTH_FAILURE => Msg::UserauthFailure,
        msg::USERAUTH_SUCCESS => Msg::UserauthSuccess,
        msg::USERAUTH_BANNER => Msg::UserauthBanner,
        msg::GLOBAL_REQUEST => Msg::GlobalRequest {
            name: r.utf8()?,
            want: r.bool()?,
            data: r.remaining(),
        },
        msg::REQUEST_SUCCESS => Msg::RequestReply(true),
        msg::REQUEST_FAILURE => Msg::RequestReply(false),
        msg::CHANNEL_OPEN => channel_open(&mut r)?,
        msg::CHANNEL_OPEN_CONFIRMATION => Msg::ChannelOpenConfirmation {
            id: r.u32()?,
            remote: r.u32()?,
            window: r.u32()?,
            max: r.u32()?,
        },
        msg::CHANNEL_OPEN_FAILURE => Msg::ChannelOpenFailure {
            id: r.u32()?,
            code: r.u32()?,
            text: r.string()?,
        },
        msg::CHANNEL_WINDOW_ADJUST => Msg::WindowAdjust {
            id: r.u32()?,
            n: r.u32()?,
        },
        msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
            let id = r.u32()?;
            let ext = t == msg::CHANNEL_EXTENDED_DATA;
            if ext {
                r.u32()?;
            }
            Msg::Data {
                id,
                ext,
                data: r.string()?,
            }
        }
        msg::CHANNEL_EOF => Msg::Eof { id: r.u32()? },
        msg::CHANNEL_CLOSE => Msg::Close { id: r.u32()? },
        msg::CHANNEL_REQUEST => channel_request(&mut r)?,
        msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE => Msg::ChannelReply,
        _ => Msg::Unknown,
    })
}

fn ext_info<'a>(r: &mut Reader<'a>) -> Result<Msg<'a>, WireError> {
    let n = r.u32()?;
    let mut server_sig_algs = None;
    for _ in 0..n.min(64) {
        let name = r.utf8()?;
        let value = r.utf8()?;
        if name == "server-sig-algs" {
            server_sig_algs = Some(value);
        }
    }
    Ok(Msg::ExtInfo { server_sig_algs })
}

fn userauth_request<'a>(r: &mut Reader<'a>) -> Result<Msg<'a>, WireError> {
    let user = r.utf8()?;
    let service = r.utf8()?;
    let method = match r.utf8()? {
        "publickey" => {
            let signed = r.bool()?;
            let alg = r.utf8()?;
            let blob = r.string()?;
            let sig = if signed { Some(r.string()?) } else { None };
            Method::Publickey { alg, blob, sig }
        }
        other => Method::Other(other),
    };
    Ok(Msg::UserauthRequest {
        user,
        service,
        method,
    })
}

fn channel_open<'a>(r: &mut Reader<'a>) -> Result<Msg<'a>, WireError> {
    let name = r.utf8()?;
    let (remote, window, max) = (r.u32()?, r.u32()?, r.u32()?);
    let mut fields = || -> Result<(&'a str, u32), WireError> { Ok((r.utf8()?, r.u32()?)) };
    let kind = match name {
        "session" => OpenKind::Session,
        "direct-tcpip" => match fields() {
            Ok((host, port)) => OpenKind::DirectTcpip { host, port },
            Err(e) => OpenKind::Malformed(name, e),
        },
        "forwarded-tcpip" => match fields() {
            Ok((address, port)) => OpenKind::ForwardedTcpip { address, port },
            Err(e) => OpenKind::Malformed(name, e),
        },
        "p2p@warren" => match fields() {
            Ok((host, port)) => OpenKind::P2p { host, port },
            Err(e) => OpenKind::Malformed(name, e),
        },
        _ => OpenKind::Other,
    };
    Ok(Msg::ChannelOpen {
        kind,
        remote,
        window,
        max,
    })
}

fn channel_request<'a>(r: &mut Reader<'a>) -> Result<Msg<'a>, WireError> {
    let id = r.u32()?;
    let name = r.utf8()?;
    let want = r.bool()?;
    let req = match name {
        "exec" => r
            .utf8()
            .map_or_else(|e| ChanReq::Malformed(name, e), ChanReq::Exec),
        "shell" => ChanReq::Shell,
        "pty-req" => ChanReq::PtyReq,
        "exit-status" => r
            .u32()
            .map_or_else(|e| ChanReq::Malformed(name, e), ChanReq::ExitStatus),
        "exit-signal" => ChanReq::ExitSignal,
        other => ChanReq::Other(other),
    };
    Ok(Msg::ChannelRequest { id, want, req })
}

/// The channel number and data length of a CHANNEL_DATA payload of at
/// least 9 bytes, read in place for the zero-copy path (see
/// [`super::Conn::data_frame`]); `None` when shorter.
pub fn data_header(p: &[u8]) -> Option<(u32, usize)> {
    let h: &[u8; 9] = p.get(..9)?.try_into().ok()?;
    let id = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    Some((id, len))
}

/// Parses a user key blob offered with algorithm `alg`; `None` for key types
/// or algorithm names Warren does not accept (certificates, ssh-rsa with
/// SHA-1, security keys, DSA).
pub fn user_key(alg: &str, blob: &[u8]) -> Option<PublicKey> {
    let key = PublicKey::from_bytes(blob).ok()?;
    let ok = match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => key.algorithm().as_str() == alg,
        Algorithm::Rsa { .. } => alg == "rsa-sha2-256" || alg == "rsa-sha2-512",
        _ => false,
    };
    ok.then_some(key)
}
