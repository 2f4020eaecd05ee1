//! Simultaneous open: both sides send probes from the socket they
//! discovered with to every candidate of the other, answer each probe with
//! an ack, and stop once they have both received a probe and had one of
//! theirs acknowledged. The first probes are dropped by the NAT that has
//! no mapping yet; the later ones pass because by then both have sent.
//!
//! A packet is 16 bytes: `0x00 'W' 'p' kind session[12]`. Its first byte
//! has QUIC's fixed bit clear, so quinn (later on the same socket) drops a
//! late probe without answering it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::PUNCH_INTERVAL;

const PROBE: u8 = 1;
const ACK: u8 = 2;
const LEN: usize = 16;

pub type Session = [u8; 12];

fn packet(kind: u8, session: &Session) -> [u8; LEN] {
    let mut p = [0u8; LEN];
    p[1] = b'W';
    p[2] = b'p';
    p[3] = kind;
    p[4..].copy_from_slice(session);
    p
}

fn parse(p: &[u8], session: &Session) -> Option<u8> {
    (p.len() == LEN && p[..3] == [0, b'W', b'p'] && &p[4..] == session).then_some(p[3])
}

/// Punches toward `candidates` for at most `budget`; the peer's address
/// that answered, or `None`. `linger`: the side that connects afterwards
/// repeats its last ack.
pub async fn punch(
    sock: &UdpSocket,
    session: &Session,
    candidates: &[SocketAddr],
    budget: Duration,
    linger: bool,
) -> Option<SocketAddr> {
    let deadline = Instant::now() + budget;
    let probe = packet(PROBE, session);
    let ack = packet(ACK, session);
    let mut got_probe = false;
    let mut acked: Option<SocketAddr> = None;
    let mut tick = tokio::time::interval(PUNCH_INTERVAL);
    let mut buf = [0u8; 64];
    while !(got_probe && acked.is_some()) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = tick.tick() => {
                for c in candidates {
                    let _ = sock.send_to(&probe, c).await;
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return None };
                match parse(&buf[..n], session) {
                    Some(PROBE) => {
                        got_probe = true;
                        let _ = sock.send_to(&ack, from).await;
                    }
                    Some(ACK) => acked = Some(from),
                    _ => {}
                }
            }
        }
    }
    if linger && let Some(peer) = acked {
        // The side that connects next acks the peer's probe once more, in
        // case its first ack was lost while the peer still waits for it
        // (quinn will drop any probe that arrives later).
        for _ in 0..2 {
            let _ = sock.send_to(&ack, peer).await;
        }
    }
    acked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_sockets_find_each_other_and_strangers_do_not_count() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // A dead candidate first: punching tries every one.
        let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let s = [3u8; 12];
        let budget = Duration::from_secs(5);
        let (to_b, to_a) = ([dead, ba], [aa]);
        let (ra, rb) = tokio::join!(
            punch(&a, &s, &to_b, budget, true),
            punch(&b, &s, &to_a, budget, false)
        );
        assert_eq!((ra, rb), (Some(ba), Some(aa)));

        // A peer of another session is never taken for ours.
        let other = [4u8; 12];
        let (to_b, to_a) = ([ba], [aa]);
        let (ra, rb) = tokio::join!(
            punch(&a, &s, &to_b, Duration::from_millis(400), false),
            punch(&b, &other, &to_a, Duration::from_millis(400), false)
        );
        assert_eq!((ra, rb), (None, None));
    }
}
