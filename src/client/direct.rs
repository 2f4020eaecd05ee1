//! The controller's end of direct paths ([`crate::p2p`]): one
//! [`DevicePath`] per device, upgraded in the background while streams go
//! through the relay, used for new streams once up, and dropped back to
//! relayed (with the reason) when it fails or dies. A live stream is never
//! moved; a failed upgrade is tried again after [`RETRY_AFTER`], on the
//! next stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use super::tunnel::OpenError;
use crate::p2p::signal::{Candidates, Header, Lines, Signal, parse_session, session_hex};
use crate::p2p::{PUNCH_BUDGET, RETRY_AFTER, SIGNAL_TIMEOUT, discovery, pump, punch, quic};
use crate::protocol::limits::STREAM_OPEN_TIMEOUT;
use crate::ssh::client::{ClientConnection, ForwardedHandler};
use crate::ssh::{Channel, SpliceStats};

/// Where a device's direct path stands.
#[derive(Clone)]
pub enum State {
    /// Not tried yet.
    Idle,
    Upgrading,
    Up(Arc<Link>),
    /// Relayed, and why; the next stream after `retry_at` tries again.
    Relayed {
        why: String,
        retry_at: Instant,
    },
}

/// One device's direct path.
pub struct DevicePath {
    device: String,
    state: watch::Sender<State>,
}

impl DevicePath {
    pub fn new(device: &str) -> Arc<DevicePath> {
        Arc::new(DevicePath {
            device: device.to_string(),
            state: watch::Sender::new(State::Idle),
        })
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// The live link, if the path is up.
    pub fn link(&self) -> Option<Arc<Link>> {
        match &*self.state.borrow() {
            State::Up(l) if l.conn.close_reason().is_none() => Some(l.clone()),
            _ => None,
        }
    }

    /// Marks the path as upgrading if an upgrade is due now (never tried,
    /// or the retry time passed); true if the caller should start one.
    pub fn claim_upgrade(&self) -> bool {
        self.state.send_if_modified(|s| {
            let due = match s {
                State::Idle => true,
                State::Relayed { retry_at, .. } => Instant::now() >= *retry_at,
                State::Upgrading | State::Up(_) => false,
            };
            if due {
                *s = State::Upgrading;
            }
            due
        })
    }

    /// Waits at most `budget` for the path to be up.
    pub async fn wait_up(&self, budget: Duration) -> Option<Arc<Link>> {
        let mut rx = self.state.subscribe();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    State::Up(l) => return Some(l.clone()),
                    State::Relayed { .. } => return None,
                    State::Idle | State::Upgrading => {}
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(budget, wait).await.ok().flatten()
    }

    /// Why streams to this device are relayed now (`None` when direct).
    pub fn why_relayed(&self) -> Option<String> {
        match self.state() {
            State::Up(_) => None,
            State::Idle => Some("no direct path tried yet".into()),
            State::Upgrading => Some("direct path being set up".into()),
            State::Relayed { why, .. } => Some(why),
        }
    }

    /// Back to "not tried" (no relay connection to try on).
    pub fn reset(&self) {
        self.state.send_replace(State::Idle);
    }

    fn relayed(&self, why: String) {
        tracing::info!(device = %self.device, retry_in = ?RETRY_AFTER, "direct path: relayed: {why}");
        self.state.send_replace(State::Relayed {
            why,
            retry_at: Instant::now() + RETRY_AFTER,
        });
    }

    /// Upgrades over `conn` (the relay connection in use), then keeps the
    /// signalling going while the path lives; returns when it has ended.
    /// Call after [`DevicePath::claim_upgrade`] said yes.
    pub async fn run<H: ForwardedHandler>(
        self: Arc<Self>,
        conn: Arc<ClientConnection<H>>,
        relay: String,
        port: u16,
    ) {
        let ch = match conn.open_p2p(&self.device, u32::from(port)).await {
            Ok(ch) => ch,
            Err(e) => return self.relayed(format!("{e:#}")),
        };
        let mut lines = Lines::new(ch);
        let up = tokio::time::timeout(
            SIGNAL_TIMEOUT + PUNCH_BUDGET * 2,
            setup(&mut lines, &relay, &self.device),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("direct path setup timed out")));
        let (conn, ep) = match up {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{e:#}");
                lines.send(&Signal::Failed { why: why.clone() }).await;
                lines.close();
                return self.relayed(why);
            }
        };
        lines.send(&Signal::Up).await;
        let (out, outgoing) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            conn: conn.clone(),
            out,
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            _ep: ep,
        });
        tracing::info!(device = %self.device, peer = %conn.remote_address(), "direct path up");
        self.state.send_replace(State::Up(link.clone()));
        let why = signalling(&mut lines, &link, outgoing).await;
        lines.send(&Signal::Failed { why: why.clone() }).await;
        lines.close();
        conn.close(0u32.into(), b"bye");
        link.fail_pending(&why);
        self.relayed(why);
    }
}

/// Passes stream requests out and the relay's answers in, until the path
/// or the signalling channel ends; returns why.
async fn signalling(
    lines: &mut Lines,
    link: &Link,
    mut outgoing: mpsc::UnboundedReceiver<Signal>,
) -> String {
    loop {
        tokio::select! {
            m = lines.recv() => match m {
                Ok(Some(Signal::Ok { id })) => link.answer(id, Ok(())),
                Ok(Some(Signal::Refused { id, why })) => link.answer(id, Err(why)),
                Ok(Some(other)) => return format!("unexpected {other:?} from the relay"),
                Ok(None) => return "the relay closed the direct path's signalling".into(),
                Err(e) => return format!("{e:#}"),
            },
            Some(m) = outgoing.recv() => {
                if !lines.send(&m).await {
                    return "the relay closed the direct path's signalling".into();
                }
            }
            e = link.conn.closed() => return format!("direct path lost: {e}"),
        }
    }
}

/// Hello, discovery, offer, answer, punch, QUIC connect.
async fn setup(
    lines: &mut Lines,
    relay: &str,
    device: &str,
) -> Result<(quinn::Connection, quinn::Endpoint)> {
    let udp_port = match lines.recv().await? {
        Some(Signal::Hello { udp_port: Some(p) }) => p,
        other => bail!("expected the relay's hello, got {other:?}"),
    };
    let relay = discovery::relay_udp(relay, udp_port).await?;
    let sock = discovery::bind_for(relay).await?;
    let found = discovery::discover(&sock, relay).await;
    let public = discovery::check(&found, "the controller")?;
    let me = quic::Identity::generate()?;
    let session: [u8; 12] = crate::p2p::random();
    let offer = Candidates {
        session: session_hex(&session),
        fingerprint: me.fingerprint.clone(),
        candidates: discovery::candidates(&sock, relay, public).await,
        nat: found.nat,
    };
    if !lines.send(&Signal::Offer(offer)).await {
        bail!("signalling channel closed");
    }
    let answer = match lines.recv().await? {
        Some(Signal::Answer(a)) => a,
        Some(Signal::Decline { why }) => bail!("{why}"),
        other => bail!("expected the device's answer, got {other:?}"),
    };
    if parse_session(&answer.session) != Some(session) {
        bail!("the device answered another session");
    }
    let Some(peer) = punch::punch(&sock, &session, &answer.candidates, PUNCH_BUDGET, true).await
    else {
        bail!("hole punching got no answer from device {device} within {PUNCH_BUDGET:?}");
    };
    let ep = quic::endpoint(sock.into_std()?, None)?;
    let config = quic::client_config(&me, &answer.fingerprint)?;
    let conn = tokio::time::timeout(PUNCH_BUDGET, quic::connect(&ep, config, peer))
        .await
        .map_err(|_| anyhow!("QUIC handshake with {peer} timed out"))??;
    Ok((conn, ep))
}

/// A direct path that is up.
pub struct Link {
    conn: quinn::Connection,
    out: mpsc::UnboundedSender<Signal>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    next: AtomicU64,
    _ep: quinn::Endpoint,
}

impl Link {
    fn answer(&self, id: u64, r: Result<(), String>) {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(r);
        }
    }

    fn fail_pending(&self, why: &str) {
        let all: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, tx) in all {
            let _ = tx.send(Err(format!("direct path ended: {why}")));
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Opens a stream to `host:port` on this path: the relay authorizes
    /// it first (and audits it), then the device checks its allowlist.
    /// `Failed` means the path itself failed: relay the stream instead.
    pub async fn open(self: &Arc<Self>, host: &str, port: u16) -> Result<DirectStream, OpenError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let asked = Signal::Stream {
            id,
            host: host.to_string(),
            port,
        };
        if self.out.send(asked).is_err() {
            return Err(OpenError::Failed("direct path ended".into()));
        }
        match tokio::time::timeout(STREAM_OPEN_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) if why.starts_with("direct path ended") => {
                return Err(OpenError::Failed(why));
            }
            Ok(Ok(Err(why))) => return Err(OpenError::Refused(why)),
            _ => return Err(OpenError::Failed("the relay did not answer".into())),
        }
        let opened = tokio::time::timeout(STREAM_OPEN_TIMEOUT, self.open_quic(id, port)).await;
        match opened {
            Ok(Ok(Ok(s))) => Ok(s),
            Ok(Ok(Err(why))) => {
                self.end(id, SpliceStats::default(), Duration::ZERO);
                Err(OpenError::Refused(why))
            }
            Ok(Err(e)) => Err(OpenError::Failed(format!("{e:#}"))),
            Err(_) => Err(OpenError::Failed("the device did not answer".into())),
        }
    }

    /// The QUIC stream: header out, the device's `ok` or `refused WHY` in.
    async fn open_quic(
        self: &Arc<Self>,
        id: u64,
        port: u16,
    ) -> Result<Result<DirectStream, String>> {
        let (mut send, recv) = self.conn.open_bi().await?;
        let mut header = serde_json::to_vec(&Header { id, port })?;
        header.push(b'\n');
        send.write_all(&header).await?;
        let mut recv = BufReader::new(recv);
        let mut line = String::new();
        recv.read_line(&mut line).await?;
        let line = line.trim_end();
        if line == "ok" {
            return Ok(Ok(DirectStream {
                link: self.clone(),
                id,
                send,
                recv,
            }));
        }
        Ok(Err(line
            .strip_prefix("refused ")
            .unwrap_or("the device closed the stream")
            .to_string()))
    }

    fn end(&self, id: u64, stats: SpliceStats, took: Duration) {
        let _ = self.out.send(Signal::End {
            id,
            up: stats.received,
            down: stats.sent,
            ms: took.as_millis() as u64,
        });
    }
}

/// One stream on a direct path.
pub struct DirectStream {
    link: Arc<Link>,
    id: u64,
    send: quinn::SendStream,
    recv: BufReader<quinn::RecvStream>,
}

impl DirectStream {
    /// Splices with a byte stream until both directions are done or the
    /// path dies; `sent` counts bytes toward the local stream, as
    /// [`Channel::splice_io`] does. The relay gets the counts (`end`).
    pub async fn splice_io<R, W>(self, mut reader: R, mut writer: W) -> SpliceStats
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let DirectStream {
            link,
            id,
            mut send,
            recv,
        } = self;
        // Bytes the header read took past the device's `ok` line.
        let first = recv.buffer().to_vec();
        let mut recv = recv.into_inner();
        let up = async {
            let mut n = 0;
            let _ = pump::to_quic(&mut reader, &mut send, &mut n).await;
            n
        };
        let down = async {
            let mut n = 0;
            let _ = pump::from_quic(&first, &mut recv, &mut writer, &mut n).await;
            n
        };
        let mut stats = SpliceStats::default();
        tokio::select! {
            (u, d) = async { tokio::join!(up, down) } => {
                stats.received = u;
                stats.sent = d;
            }
            _ = link.conn.closed() => {}
        }
        link.end(id, stats, started.elapsed());
        stats
    }
}

/// A stream, relayed or direct.
pub enum Stream {
    Relayed(Channel),
    Direct(DirectStream),
}

impl Stream {
    pub fn path(&self) -> crate::p2p::PathKind {
        match self {
            Stream::Relayed(_) => crate::p2p::PathKind::Relayed,
            Stream::Direct(_) => crate::p2p::PathKind::Direct,
        }
    }

    pub async fn splice_io<R, W>(self, reader: R, writer: W) -> SpliceStats
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match self {
            Stream::Relayed(ch) => ch.splice_io(reader, writer).await,
            Stream::Direct(d) => d.splice_io(reader, writer).await,
        }
    }

    /// Splices with a TCP stream ([`Channel::splice_tcp`] when relayed).
    pub async fn splice_tcp(self, tcp: tokio::net::TcpStream) -> SpliceStats {
        match self {
            Stream::Relayed(ch) => ch.splice_tcp(tcp).await,
            Stream::Direct(d) => {
                let (r, w) = tcp.into_split();
                d.splice_io(r, w).await
            }
        }
    }
}

/// The direct paths of one controller process, by device.
#[derive(Default)]
pub struct Paths {
    by_device: Mutex<HashMap<String, Arc<DevicePath>>>,
}

impl Paths {
    pub fn get(&self, device: &str) -> Arc<DevicePath> {
        self.by_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device.to_string())
            .or_insert_with(|| DevicePath::new(device))
            .clone()
    }
}
