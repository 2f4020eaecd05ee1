//! UDP address discovery: "which address and port did my NAT give this
//! socket?", asked of the relay from the very socket a direct path will use.
//!
//! A request is [`REQUEST_LEN`] bytes or more; a reply is at most
//! [`MAX_REPLY_LEN`] bytes, never more than the request, so an
//! unauthenticated sender with a forged source address gets nothing larger
//! than it sent (the relay also rate limits per source, see `relay::udp`).
//!
//! ```text
//! request: "WRNd" 1 0x01 txid[12] zero padding      (>= 48 bytes)
//! reply:   "WRNd" 1 0x02 txid[12] alt_port[2] family[1] port[2] addr[4|16]
//! ```
//!
//! `alt_port` is a second UDP port of the relay: a client that asks there
//! too learns whether its NAT keeps one public port for every destination
//! (punching works) or picks a new one per destination (symmetric NAT).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::UdpSocket;

use super::NatKind;

const MAGIC: &[u8; 4] = b"WRNd";
const VERSION: u8 = 1;
const REQUEST: u8 = 1;
const REPLY: u8 = 2;
/// Smallest request the relay answers.
pub const REQUEST_LEN: usize = 48;
/// Largest reply: header, port, family and an IPv6 address.
pub const MAX_REPLY_LEN: usize = 4 + 1 + 1 + 12 + 2 + 1 + 2 + 16;
/// Largest request read (anything past the header is padding).
pub const MAX_REQUEST_LEN: usize = 512;
/// Tries per question, each waiting this long for the answer.
const TRIES: usize = 4;
const TRY_WAIT: Duration = Duration::from_millis(250);

/// A request's transaction id.
pub type TxId = [u8; 12];

pub fn request(txid: &TxId) -> Vec<u8> {
    let mut v = Vec::with_capacity(REQUEST_LEN);
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(REQUEST);
    v.extend_from_slice(txid);
    v.resize(REQUEST_LEN, 0);
    v
}

/// The relay's side: the reply to `packet` from `from`, or `None` for
/// anything that is not a well-formed request (never answered).
pub fn answer(packet: &[u8], from: SocketAddr, alt_port: u16) -> Option<Vec<u8>> {
    if packet.len() < REQUEST_LEN
        || packet.len() > MAX_REQUEST_LEN
        || &packet[..4] != MAGIC
        || packet[4] != VERSION
        || packet[5] != REQUEST
    {
        return None;
    }
    let mut v = Vec::with_capacity(MAX_REPLY_LEN);
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(REPLY);
    v.extend_from_slice(&packet[6..18]);
    v.extend_from_slice(&alt_port.to_be_bytes());
    match from.ip() {
        IpAddr::V4(a) => {
            v.push(4);
            v.extend_from_slice(&from.port().to_be_bytes());
            v.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            v.push(6);
            v.extend_from_slice(&from.port().to_be_bytes());
            v.extend_from_slice(&a.octets());
        }
    }
    debug_assert!(v.len() <= packet.len());
    Some(v)
}

/// A parsed reply: the address the relay saw, and its second port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub seen: SocketAddr,
    pub alt_port: u16,
}

pub fn parse_reply(packet: &[u8], txid: &TxId) -> Option<Reply> {
    if packet.len() < 21 || &packet[..4] != MAGIC || packet[4] != VERSION || packet[5] != REPLY {
        return None;
    }
    if &packet[6..18] != txid {
        return None;
    }
    let alt_port = u16::from_be_bytes([packet[18], packet[19]]);
    let rest = &packet[20..];
    let (family, port) = (rest[0], rest.get(1..3)?);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = match (family, rest.get(3..)) {
        (4, Some(a)) if a.len() == 4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        (6, Some(a)) if a.len() == 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(Reply {
        seen: SocketAddr::new(ip, port),
        alt_port,
    })
}

/// Asks `relay` what it sees of `sock`, a few tries; `None`: no answer
/// (UDP blocked somewhere on the way).
pub async fn ask(sock: &UdpSocket, relay: SocketAddr) -> Option<Reply> {
    let txid: TxId = super::random();
    let req = request(&txid);
    let mut buf = [0u8; 128];
    for _ in 0..TRIES {
        if sock.send_to(&req, relay).await.is_err() {
            return None;
        }
        let got = tokio::time::timeout(TRY_WAIT, async {
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return None;
                };
                if from.ip() != relay.ip() {
                    continue;
                }
                if let Some(r) = parse_reply(&buf[..n], &txid) {
                    return Some(r);
                }
            }
        })
        .await;
        if let Ok(Some(r)) = got {
            return Some(r);
        }
    }
    None
}

/// What discovery learnt about one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The public address (the relay's view), if UDP got through.
    pub public: Option<SocketAddr>,
    pub nat: NatKind,
}

/// Asks the relay's main port and then its second port; compares.
pub async fn discover(sock: &UdpSocket, relay: SocketAddr) -> Discovered {
    let Some(first) = ask(sock, relay).await else {
        return Discovered {
            public: None,
            nat: NatKind::Unknown,
        };
    };
    let nat = if first.alt_port == 0 {
        NatKind::Unknown
    } else {
        match ask(sock, SocketAddr::new(relay.ip(), first.alt_port)).await {
            Some(second) if second.seen == first.seen => NatKind::Open,
            Some(_) => NatKind::Symmetric,
            None => NatKind::Unknown,
        }
    };
    Discovered {
        public: Some(first.seen),
        nat,
    }
}

/// This machine's address on the route toward `relay` (no packet is sent:
/// connecting a UDP socket only picks a route).
pub async fn local_address(relay: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if relay.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = UdpSocket::bind(bind).await.ok()?;
    s.connect(relay).await.ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// The relay's discovery address: the host we dial for SSH, its UDP port.
pub async fn relay_udp(relay: &str, udp_port: u16) -> Result<SocketAddr> {
    // tls:// and wss:// relays: the same host.
    let relay = crate::protocol::RelayEndpoint::parse(relay)
        .map(|e| e.host_port())
        .unwrap_or_else(|_| relay.to_string());
    let addr = tokio::net::lookup_host(&relay)
        .await
        .with_context(|| format!("resolving relay {relay}"))?
        .next()
        .ok_or_else(|| anyhow!("relay {relay} has no address"))?;
    Ok(SocketAddr::new(addr.ip(), udp_port))
}

/// A UDP socket of the relay's address family, any port.
pub async fn bind_for(relay: SocketAddr) -> Result<UdpSocket> {
    let any: SocketAddr = if relay.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    UdpSocket::bind(any).await.context("binding a UDP socket")
}

/// The public address, or why punching cannot work from `side`.
pub fn check(found: &Discovered, side: &str) -> Result<SocketAddr> {
    let Some(public) = found.public else {
        bail!("UDP blocked on {side}'s side (no answer from the relay's UDP discovery)");
    };
    if found.nat == NatKind::Symmetric {
        bail!("symmetric NAT on {side}'s side (a new public port per destination)");
    }
    Ok(public)
}

/// Where the peer may reach `sock`: its address on the LAN, and public.
pub async fn candidates(
    sock: &UdpSocket,
    relay: SocketAddr,
    public: SocketAddr,
) -> Vec<SocketAddr> {
    let mut out = vec![public];
    if let (Some(ip), Ok(local)) = (local_address(relay).await, sock.local_addr()) {
        let lan = SocketAddr::new(ip, local.port());
        if lan != public {
            out.push(lan);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_never_larger_than_requests() {
        let txid = [7u8; 12];
        let req = request(&txid);
        assert_eq!(req.len(), REQUEST_LEN);
        for from in ["203.0.113.9:4000", "[2001:db8::1]:65535"] {
            let from: SocketAddr = from.parse().unwrap();
            let reply = answer(&req, from, 9).unwrap();
            assert!(reply.len() <= req.len() && reply.len() <= MAX_REPLY_LEN);
            let r = parse_reply(&reply, &txid).unwrap();
            assert_eq!((r.seen, r.alt_port), (from, 9));
            assert!(parse_reply(&reply, &[8u8; 12]).is_none(), "other txid");
        }
    }

    #[test]
    fn anything_but_a_full_request_gets_no_answer() {
        let from: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let req = request(&[1; 12]);
        assert!(answer(&req[..REQUEST_LEN - 1], from, 0).is_none(), "short");
        assert!(answer(&vec![0u8; 600], from, 0).is_none(), "long");
        let mut bad = req.clone();
        bad[5] = REPLY;
        assert!(answer(&bad, from, 0).is_none(), "a reply is no request");
        bad = req.clone();
        bad[0] = b'X';
        assert!(answer(&bad, from, 0).is_none(), "magic");
        assert!(parse_reply(&[0u8; 3], &[1; 12]).is_none());
    }

    #[tokio::test]
    async fn asks_and_learns_the_address_seen() {
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 600];
            while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                if let Some(r) = answer(&buf[..n], from, 0) {
                    let _ = relay.send_to(&r, from).await;
                }
            }
        });
        let me = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let d = discover(&me, relay_addr).await;
        assert_eq!(d.public, Some(me.local_addr().unwrap()));
        assert_eq!(d.nat, NatKind::Unknown);
    }
}
