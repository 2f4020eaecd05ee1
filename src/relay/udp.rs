//! The relay's UDP address discovery (`--udp`): answers
//! [`crate::p2p::discovery`] requests on a main port and a second one, so a
//! client learns its public address and whether its NAT is symmetric.
//!
//! Nothing here can be used to amplify: a reply is never larger than its
//! request, malformed packets get nothing, and each source address gets at
//! most [`BURST`] replies at once and [`PER_SECOND`] after that. The table
//! of sources is bounded ([`MAX_SOURCES`]); when full, new sources wait
//! until old ones have been quiet a second.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::p2p::discovery::{self, MAX_REQUEST_LEN};

/// Replies one source may get at once: a client asks twice per attempt
/// (main and second port), with a few retries.
pub const BURST: f64 = 16.0;
/// Replies per second a source gets after its burst.
pub const PER_SECOND: f64 = 8.0;
/// Sources tracked at once; more wait (a fixed bound on memory).
pub const MAX_SOURCES: usize = 4096;

/// Per-source token buckets.
#[derive(Default)]
pub struct Limiter {
    sources: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Limiter {
    /// Whether `ip` may get one more reply now.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&ip) && m.len() >= MAX_SOURCES {
            // Forget sources whose bucket has refilled: they are idle.
            m.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND < BURST
            });
            if m.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = m.entry(ip).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The two bound sockets: `addr` and a second port on the same address.
pub struct Discovery {
    main: UdpSocket,
    alt: UdpSocket,
}

impl Discovery {
    pub async fn bind(addr: SocketAddr) -> Result<Discovery> {
        let main = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot bind UDP discovery on {addr}"))?;
        let alt = UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .with_context(|| format!("cannot bind UDP discovery's second port on {}", addr.ip()))?;
        Ok(Discovery { main, alt })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.main.local_addr()?)
    }

    /// Answers on both sockets until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) {
        let limiter = Arc::new(Limiter::default());
        let alt_port = self.alt.local_addr().map(|a| a.port()).unwrap_or(0);
        let main = answer_loop(&self.main, alt_port, &limiter);
        // The second port names no further port: one comparison is enough.
        let alt = answer_loop(&self.alt, 0, &limiter);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = main => {}
            _ = alt => {}
        }
    }
}

async fn answer_loop(sock: &UdpSocket, alt_port: u16, limiter: &Limiter) {
    let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some systems: not fatal.
                tracing::debug!(error = %e, "UDP discovery receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(reply) = discovery::answer(&buf[..n], from, alt_port) else {
            continue;
        };
        if !limiter.allow(from.ip(), Instant::now()) {
            continue;
        }
        let _ = sock.send_to(&reply, from).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_the_rate() {
        let l = Limiter::default();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t = Instant::now();
        let allowed = (0..100).filter(|_| l.allow(ip, t)).count();
        assert_eq!(allowed, BURST as usize);
        // A second later: PER_SECOND more.
        let later = t + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| l.allow(ip, later)).count();
        assert_eq!(allowed, PER_SECOND as usize);
        // Another source is not held back by the first.
        assert!(l.allow("198.51.100.8".parse().unwrap(), later));
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let l = Limiter::default();
        let t = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            assert!(l.allow(IpAddr::from(i.to_be_bytes()), t));
        }
        let new: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(!l.allow(new, t), "a full table takes no new source");
        // Once the old sources have been quiet, they make room.
        assert!(l.allow(new, t + Duration::from_secs(1)));
        assert!(l.sources.lock().unwrap().len() <= MAX_SOURCES);
    }

    #[tokio::test]
    async fn answers_with_the_address_seen_and_a_second_port() {
        let d = Discovery::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = d.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(d.serve(stop.clone()));
        let me = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = discovery::discover(&me, addr).await;
        assert_eq!(got.public, Some(me.local_addr().unwrap()));
        assert_eq!(got.nat, crate::p2p::NatKind::Open);
        stop.cancel();
    }
}
