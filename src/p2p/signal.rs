//! Signalling: JSON lines on a `p2p@warren` SSH channel, controller ⇄
//! relay ⇄ device. The relay parses every line (so each side learns the
//! other's fingerprint from the relay, never from the peer directly) and
//! passes on only what the other side may see.
//!
//! ```text
//! relay → both:        {"t":"hello","udp_port":2222}
//! controller → device: {"t":"offer","session":"…","fingerprint":"SHA256:…","candidates":[…],"nat":"open"}
//! device → controller: {"t":"answer",…} or {"t":"decline","why":"…"}
//! controller → relay:  {"t":"up"}        (the QUIC connection is up)
//! controller → relay:  {"t":"stream","id":1,"host":"dev1","port":22}
//! relay → device:      {"t":"allow","id":1,"port":22}
//! relay → controller:  {"t":"ok","id":1} or {"t":"refused","id":1,"why":"…"}
//! controller → relay:  {"t":"end","id":1,"up":…,"down":…,"ms":…}
//! controller → relay:  {"t":"failed","why":"…"}   (then the channel closes)
//! ```

use std::net::SocketAddr;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::{MAX_SIGNAL_LINE, NatKind};
use crate::ssh::Channel;

/// One side's half of the path: where it may be reached and which
/// certificate it will present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidates {
    /// Hex of the 12-byte punch session id (chosen by the controller; the
    /// device echoes it).
    pub session: String,
    pub fingerprint: String,
    pub candidates: Vec<SocketAddr>,
    pub nat: NatKind,
}

/// At most this many candidates are passed on (local, public, a few more).
pub const MAX_CANDIDATES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum Signal {
    Hello {
        udp_port: Option<u16>,
    },
    Offer(Candidates),
    Answer(Candidates),
    Decline {
        why: String,
    },
    /// Controller → relay: the QUIC connection is up.
    Up,
    Stream {
        id: u64,
        host: String,
        port: u16,
    },
    Allow {
        id: u64,
        port: u16,
    },
    Ok {
        id: u64,
    },
    Refused {
        id: u64,
        why: String,
    },
    End {
        id: u64,
        up: u64,
        down: u64,
        ms: u64,
    },
    Failed {
        why: String,
    },
}

impl Signal {
    /// Parses one line; bounded and checked (candidate count).
    pub fn parse(line: &[u8]) -> Result<Signal> {
        if line.len() > MAX_SIGNAL_LINE {
            bail!(
                "signalling line of {} bytes (at most {MAX_SIGNAL_LINE})",
                line.len()
            );
        }
        let s: Signal = serde_json::from_slice(line)?;
        if let Signal::Offer(c) | Signal::Answer(c) = &s
            && (c.candidates.len() > MAX_CANDIDATES || c.session.len() != 24)
        {
            bail!("offer or answer with a bad session id or too many candidates");
        }
        Ok(s)
    }
}

/// The first line of a direct (QUIC) stream, controller → device; the
/// device answers `ok` or `refused WHY` on a line of its own.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub id: u64,
    pub port: u16,
}

/// A signalling channel: whole lines in, whole lines out.
pub struct Lines {
    ch: Channel,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(ch: Channel) -> Lines {
        Lines {
            ch,
            buf: Vec::new(),
        }
    }

    pub async fn send(&self, s: &Signal) -> bool {
        let Ok(mut line) = serde_json::to_vec(s) else {
            return false;
        };
        line.push(b'\n');
        self.ch.send_data(line).await
    }

    /// The next message; `Ok(None)` when the channel ended, an error for a
    /// line that does not parse or is too long.
    pub async fn recv(&mut self) -> Result<Option<Signal>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Signal::parse(&line[..i]).map(Some);
            }
            if self.buf.len() > MAX_SIGNAL_LINE {
                bail!("signalling line longer than {MAX_SIGNAL_LINE} bytes");
            }
            match self.ch.recv_data().await {
                Some(d) => self.buf.extend_from_slice(&d),
                None => return Ok(None),
            }
        }
    }

    pub fn close(&self) {
        self.ch.close();
    }
}

pub fn session_hex(s: &[u8; 12]) -> String {
    data_encoding::HEXLOWER.encode(s)
}

pub fn parse_session(s: &str) -> Option<[u8; 12]> {
    let v = data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let offer = Signal::Offer(Candidates {
            session: session_hex(&[0xab; 12]),
            fingerprint: "SHA256:x".into(),
            candidates: vec!["192.0.2.1:4000".parse().unwrap()],
            nat: NatKind::Open,
        });
        let line = serde_json::to_vec(&offer).unwrap();
        assert_eq!(Signal::parse(&line).unwrap(), offer);
        assert!(String::from_utf8_lossy(&line).contains(r#""t":"offer""#));
        assert_eq!(parse_session(&session_hex(&[7; 12])), Some([7; 12]));

        for bad in [
            r#"{"t":"nope"}"#,
            r#"{"t":"ok","id":1,"extra":2}"#,
            r#"{"t":"offer","session":"ab","fingerprint":"f","candidates":[],"nat":"open"}"#,
            "not json",
        ] {
            assert!(Signal::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..9).map(|i| format!("\"10.0.0.{i}:1\"")).collect();
        let big = format!(
            r#"{{"t":"answer","session":"{}","fingerprint":"f","candidates":[{}],"nat":"open"}}"#,
            session_hex(&[1; 12]),
            many.join(",")
        );
        assert!(Signal::parse(big.as_bytes()).is_err());
        assert!(Signal::parse(&vec![b' '; MAX_SIGNAL_LINE + 1]).is_err());
    }
}
