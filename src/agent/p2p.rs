//! The device's end of a direct path ([`crate::p2p`]): answer the relay's
//! `p2p@warren` channel, discover, punch, accept exactly the controller
//! whose certificate the relay vouched for, and serve its QUIC streams to
//! targets in the allowlist, each only after the relay allowed its id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::SharedAllow;
use crate::p2p::discovery;
use crate::p2p::signal::{Candidates, Header, Lines, Signal, parse_session};
use crate::p2p::{ALLOW_WAIT, PUNCH_BUDGET, SIGNAL_TIMEOUT, pump, punch, quic};
use crate::protocol::Name;
use crate::protocol::limits::TARGET_CONNECT_TIMEOUT;
use crate::ssh::IncomingChannel;

/// Largest stream header (`{"id":…,"port":…}`).
const MAX_HEADER: usize = 256;

/// What a direct path needs from the agent.
#[derive(Clone)]
pub struct Ctx {
    pub name: Name,
    pub relay: String,
    pub allow: SharedAllow,
}

/// Stream ids the relay allowed, until a stream claims them.
#[derive(Default)]
struct Allowed {
    ids: Mutex<HashMap<u64, u16>>,
    changed: Notify,
}

impl Allowed {
    fn add(&self, id: u64, port: u16) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, port);
        self.changed.notify_waiters();
    }

    /// Waits (bounded) for the relay's word on `id`; true if it allowed
    /// exactly `port`.
    async fn claim(&self, id: u64, port: u16) -> bool {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if let Some(p) = self
                    .ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id)
                {
                    return p == port;
                }
                notified.await;
            }
        };
        tokio::time::timeout(ALLOW_WAIT, wait)
            .await
            .unwrap_or(false)
    }
}

/// Serves one direct path until it or its signalling channel ends.
pub async fn serve(ctx: Ctx, controller: String, channel: IncomingChannel) {
    let mut lines = Lines::new(channel.accept().await);
    let conn = match tokio::time::timeout(
        SIGNAL_TIMEOUT + PUNCH_BUDGET * 2,
        setup(&ctx, &mut lines),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let why = format!("{e:#}");
            tracing::info!(%controller, "no direct path: {why}");
            lines.send(&Signal::Decline { why }).await;
            return;
        }
        Err(_) => {
            tracing::info!(%controller, "no direct path: setup timed out");
            return;
        }
    };
    tracing::info!(%controller, peer = %conn.remote_address(), "direct path up");
    let allowed = Arc::new(Allowed::default());
    let why = loop {
        tokio::select! {
            m = lines.recv() => match m {
                Ok(Some(Signal::Allow { id, port })) => allowed.add(id, port),
                Ok(Some(other)) => break format!("unexpected {other:?} from the relay"),
                Ok(None) => break "signalling channel closed".to_string(),
                Err(e) => break format!("{e:#}"),
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::spawn(stream(ctx.clone(), allowed.clone(), send, recv));
                }
                Err(e) => break format!("{e}"),
            },
        }
    };
    conn.close(0u32.into(), b"bye");
    lines.close();
    tracing::info!(%controller, "direct path closed: {why}");
}

/// Hello, offer, discovery, answer, punch, QUIC accept.
async fn setup(ctx: &Ctx, lines: &mut Lines) -> Result<quinn::Connection> {
    let udp_port = match lines.recv().await? {
        Some(Signal::Hello { udp_port: Some(p) }) => p,
        other => bail!("expected the relay's hello, got {other:?}"),
    };
    let offer = match lines.recv().await? {
        Some(Signal::Offer(c)) => c,
        other => bail!("expected an offer, got {other:?}"),
    };
    let session = parse_session(&offer.session).ok_or_else(|| anyhow!("bad session id"))?;
    let relay = discovery::relay_udp(&ctx.relay, udp_port).await?;
    let sock = discovery::bind_for(relay).await?;
    let found = discovery::discover(&sock, relay).await;
    let public = discovery::check(&found, &format!("device {}", ctx.name))?;
    let me = quic::Identity::generate()?;
    let candidates = discovery::candidates(&sock, relay, public).await;
    let answer = Candidates {
        session: offer.session.clone(),
        fingerprint: me.fingerprint.clone(),
        candidates,
        nat: found.nat,
    };
    if !lines.send(&Signal::Answer(answer)).await {
        bail!("signalling channel closed");
    }
    let Some(peer) = punch::punch(&sock, &session, &offer.candidates, PUNCH_BUDGET, false).await
    else {
        bail!("hole punching got no answer from the controller within {PUNCH_BUDGET:?}");
    };
    tracing::debug!(%peer, "punched");
    let server = quic::server_config(&me, &offer.fingerprint)?;
    let ep = quic::endpoint(sock.into_std()?, Some(server))?;
    let incoming = tokio::time::timeout(PUNCH_BUDGET, ep.accept())
        .await
        .map_err(|_| anyhow!("the controller did not start QUIC within {PUNCH_BUDGET:?}"))?
        .ok_or_else(|| anyhow!("QUIC endpoint closed"))?;
    let conn = incoming
        .await
        .map_err(|e| anyhow!("QUIC handshake with the controller: {e}"))?;
    Ok(conn)
}

/// One QUIC stream: header, the relay's allow, allowlist, connect, splice.
async fn stream(
    ctx: Ctx,
    allowed: Arc<Allowed>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut recv = BufReader::new(recv);
    let target = match admit(&ctx, &allowed, &mut recv).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("refused direct stream: {e:#}");
            let _ = send.write_all(format!("refused {e:#}\n").as_bytes()).await;
            let _ = send.finish();
            return;
        }
    };
    let _ = target.set_nodelay(true);
    if send.write_all(b"ok\n").await.is_err() {
        return;
    }
    // Bytes the header read took past the header line.
    let first = recv.buffer().to_vec();
    let mut recv = recv.into_inner();
    let (mut tr, mut tw) = target.into_split();
    let (mut up, mut down) = (0, 0);
    let (u, d) = tokio::join!(
        pump::from_quic(&first, &mut recv, &mut tw, &mut up),
        pump::to_quic(&mut tr, &mut send, &mut down),
    );
    tracing::debug!(up, down, ?u, ?d, "direct stream closed");
}

async fn admit(
    ctx: &Ctx,
    allowed: &Allowed,
    recv: &mut BufReader<quinn::RecvStream>,
) -> Result<TcpStream> {
    let header = read_header(recv).await?;
    if !allowed.claim(header.id, header.port).await {
        bail!("stream {} was not allowed by the relay", header.id);
    }
    let allow = super::current(&ctx.allow);
    let target = super::admit(&ctx.name, &allow, ctx.name.as_str(), u32::from(header.port))
        .map_err(|r| anyhow!("{r}"))?;
    let addr = target.connect_string();
    match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => bail!("target {addr}: {e}"),
        Err(_) => bail!("target {addr} did not answer"),
    }
}

async fn read_header(recv: &mut BufReader<quinn::RecvStream>) -> Result<Header> {
    let mut line = Vec::new();
    let mut limited = (&mut *recv).take(MAX_HEADER as u64);
    let read = tokio::time::timeout(SIGNAL_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    match read {
        Ok(Ok(n)) if n > 0 && line.ends_with(b"\n") => {}
        Ok(Ok(_)) => bail!("stream header missing or longer than {MAX_HEADER} bytes"),
        Ok(Err(e)) => bail!("reading the stream header: {e}"),
        Err(_) => bail!("no stream header within {SIGNAL_TIMEOUT:?}"),
    }
    serde_json::from_slice(&line[..line.len() - 1]).context("stream header")
}
