//! Audit events: who did what. Each event is one structured log line with
//! target `audit` and an `event` field, and one row in the store's `audit`
//! table, which `warren admin log` and `ssh relay log` query.
//!
//! Writes never happen on the data path or under the registry lock: callers
//! hand events to [`Audit`], and one writer task ([`run_writer`]) stores them
//! in batches, one transaction per batch (`synchronous = FULL`). Whoever must
//! tell a person "done" (an admin command, an enrollment) first waits for
//! [`Audit::record_durable`], so an acknowledged event survives `kill -9`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::policy::PublicRefusal;
use crate::protocol::limits::{
    AUDIT_BACKLOG_MAX, AUDIT_BATCH_MAX, AUDIT_PRUNE_INTERVAL, AUDIT_RETRY_INTERVAL,
};
use crate::ssh::SpliceStats;
use crate::store::{Exposure, Store};

pub use crate::store::audit::{Event, OK, REFUSED, kind, now_ms};

enum Msg {
    Event(Box<Event>),
    /// Answered once every event sent before it is durable.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Where the relay's components send audit events. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::UnboundedSender<Msg>,
    written: watch::Receiver<u64>,
}

/// The other end of an [`Audit`], consumed by [`run_writer`].
pub struct AuditWriter {
    rx: mpsc::UnboundedReceiver<Msg>,
    written: watch::Sender<u64>,
}

pub fn channel() -> (Audit, AuditWriter) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (wtx, wrx) = watch::channel(0);
    (Audit { tx, written: wrx }, AuditWriter { rx, written: wtx })
}

impl Audit {
    /// Logs the event and queues it for the store; never waits.
    pub fn record(&self, event: Event) {
        self.count(&event);
        self.record_counted(event);
    }

    /// Counts the event in the metrics only: one of many a peer can cause
    /// at will, aggregated into a later record (`Relay::record_flood`).
    pub fn count(&self, event: &Event) {
        crate::metrics::global().event(crate::metrics::EventFacts {
            kind: &event.kind,
            result: &event.result,
            reason: event.reason.as_deref(),
            system: event.system.as_deref(),
            bytes_up: event.bytes_up,
            bytes_down: event.bytes_down,
        });
    }

    /// Logs and queues a record whose events the metrics already counted
    /// one by one ([`Audit::count`]): a summary of aggregated events.
    pub fn record_counted(&self, event: Event) {
        event.log();
        crate::metrics::global().audit_queued(1);
        // The writer lives as long as the relay serves; events after that are
        // still logged.
        let _ = self.tx.send(Msg::Event(Box::new(event)));
    }

    /// Records the events and waits until they (and everything before them)
    /// are durable in the store.
    pub async fn record_durable(&self, events: Vec<Event>) -> anyhow::Result<()> {
        for e in events {
            self.record(e);
        }
        self.flush().await
    }

    /// Waits until every event recorded so far is durable.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("writing the audit log: {e}"))
    }

    /// A receiver whose value (events stored so far) changes after each batch.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }
}

/// Stores events in batches until `stop`, then stores what is still queued.
/// Prunes events older than `retention` at start and every
/// [`AUDIT_PRUNE_INTERVAL`].
///
/// A batch the store refuses (its database is away) is kept, in order, and
/// written before anything newer once the store answers again (tried every
/// [`AUDIT_RETRY_INTERVAL`]), up to [`AUDIT_BACKLOG_MAX`] events; past that
/// bound new events are dropped with an error line each batch.
pub async fn run_writer(
    store: Store,
    mut w: AuditWriter,
    retention: Option<Duration>,
    stop: CancellationToken,
) {
    let mut prune = tokio::time::interval(AUDIT_PRUNE_INTERVAL);
    let mut retry = tokio::time::interval(AUDIT_RETRY_INTERVAL);
    let mut backlog = Backlog::default();
    loop {
        let first = tokio::select! {
            biased;
            m = w.rx.recv() => m,
            _ = retry.tick(), if !backlog.events.is_empty() => {
                write_batch(&store, &w.written, &mut backlog, Vec::new()).await;
                continue;
            }
            _ = prune.tick(), if retention.is_some() => {
                if let Some(r) = retention {
                    prune_now(&store, r).await;
                }
                continue;
            }
            _ = stop.cancelled() => {
                let mut rest = Vec::new();
                while let Ok(m) = w.rx.try_recv() {
                    rest.push(m);
                }
                write_batch(&store, &w.written, &mut backlog, rest).await;
                if !backlog.events.is_empty() {
                    tracing::error!(lost = backlog.events.len(), "audit events not written at shutdown: the store is unreachable");
                }
                return;
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH_MAX {
            match w.rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        write_batch(&store, &w.written, &mut backlog, batch).await;
    }
}

/// Events the store refused, oldest first, waiting to be written.
#[derive(Default)]
struct Backlog {
    events: std::collections::VecDeque<Event>,
    /// Events dropped because the backlog was full, since the last write.
    dropped: u64,
}

async fn write_batch(
    store: &Store,
    written: &watch::Sender<u64>,
    backlog: &mut Backlog,
    batch: Vec<Msg>,
) {
    let mut acks = Vec::new();
    let mut taken = 0i64;
    for m in batch {
        match m {
            Msg::Event(e) => {
                taken += 1;
                if backlog.events.len() < AUDIT_BACKLOG_MAX {
                    backlog.events.push_back(*e);
                } else {
                    backlog.dropped += 1;
                }
            }
            Msg::Flush(tx) => acks.push(tx),
        }
    }
    // Off the queue (written now, or kept in the backlog).
    crate::metrics::global().audit_queued(-taken);
    let mut result = Ok(());
    while !backlog.events.is_empty() {
        let take = backlog.events.len().min(AUDIT_BATCH_MAX);
        let events: Vec<Event> = backlog.events.iter().take(take).cloned().collect();
        match store.call(move |s| s.append_audit(&events)).await {
            Ok(()) => {
                backlog.events.drain(..take);
                written.send_modify(|v| *v += take as u64);
            }
            Err(e) => {
                result = Err(format!("{e:#}"));
                break;
            }
        }
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, kept = backlog.events.len(), "writing audit events; kept to write when the store is back");
    }
    if backlog.dropped > 0 {
        tracing::error!(
            dropped = backlog.dropped,
            bound = AUDIT_BACKLOG_MAX,
            "audit backlog full while the store is unreachable: events dropped"
        );
        if result.is_ok() {
            backlog.dropped = 0;
        }
    }
    for ack in acks {
        let _ = ack.send(result.clone());
    }
}

async fn prune_now(store: &Store, retention: Duration) {
    let before = now_ms().saturating_sub(retention.as_millis() as u64);
    match store.call(move |s| s.prune_audit(before)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, ?retention, "pruned old audit events"),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "pruning audit events"),
    }
}

/// A login or command refused before any identity was known.
pub fn login_refused(peer: SocketAddr, user: &str, code: &str, reason: &str) -> Event {
    Event::new(kind::LOGIN, REFUSED)
        .peer(peer)
        .system(user)
        .detail(reason)
        .reason(code)
}

/// The reason codes of refused logins (the audit log's `reason`, and the
/// `reason` label of `warren_login_failures_total`).
pub mod login_reason {
    /// No key offered is registered for the system asked for.
    pub const UNKNOWN_KEY: &str = "unknown_key";
    /// An enroll login offered a key and never signed with it.
    pub const ENROLL_UNSIGNED: &str = "enroll_unsigned";
    /// Too many failed logins from the address.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The store (a cluster's database) cannot be reached to check keys.
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    /// Closed before its handshake: the cap on unauthenticated
    /// connections (the address's, or the whole) was full.
    pub const TOO_MANY_UNAUTHENTICATED: &str = "too_many_unauthenticated";
}

pub fn stream_closed(
    system: &str,
    controller: &str,
    device: &str,
    target: &str,
    stats: SpliceStats,
    duration: Duration,
) -> Event {
    Event::new(kind::STREAM_CLOSE, "closed")
        .system(system)
        .key_name(controller)
        .device(device)
        .target(target)
        .transfer(stats, duration)
}

/// A public port opened, closed or failed to open (`action`).
pub fn public_port(action: &str, e: &Exposure, detail: &str) -> Event {
    let allow = if e.allow_from.is_empty() {
        "any".to_string()
    } else {
        e.allow_from.join(",")
    };
    Event::new(kind::PUBLIC_PORT, action)
        .system(e.system.as_str())
        .device(e.device.as_str())
        .target(format!("{}:{}", e.device, e.device_port))
        .detail(format!(
            "relay port {}: {detail} (allow_from {allow})",
            e.port
        ))
}

/// A connection to a public port from a peer outside its allow list.
pub fn public_refused(e: &Exposure, peer: SocketAddr, why: &PublicRefusal) -> Event {
    Event::new(kind::PUBLIC_CONNECTION, REFUSED)
        .peer(peer)
        .system(e.system.as_str())
        .device(e.device.as_str())
        .target(format!("{}:{}", e.device, e.device_port))
        .detail(format!("relay port {}: {why}", e.port))
        .reason(why.code())
}
