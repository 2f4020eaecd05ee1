//! The relay's background work: the status and audit writers (run by
//! [`Server::serve`](super::Server::serve) alone, stopped last so they store
//! what the connections queued), and the tasks on the relay's tracker that
//! watch the store and flush last-seen times.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Relay, StatusChange, gateways, ratelimit};
use crate::audit::{self, AuditWriter};
use crate::protocol::DeviceId;
use crate::protocol::limits::{LAST_SEEN_FLUSH_INTERVAL, STATUS_RETRY_INTERVAL};
use crate::ssh::Fingerprint;
use crate::store::{DeviceUp, Store};

/// The receiving ends of the relay's status and audit channels, until
/// `serve` starts their writers.
pub(super) struct Background {
    status_rx: mpsc::UnboundedReceiver<StatusChange>,
    audit: AuditWriter,
}

/// The running writers, stopped after the connections are gone.
pub(super) struct Writers {
    stop: CancellationToken,
    floods: JoinHandle<()>,
    status: JoinHandle<()>,
    audit: JoinHandle<()>,
}

impl Background {
    pub(super) fn new(
        status_rx: mpsc::UnboundedReceiver<StatusChange>,
        audit: AuditWriter,
    ) -> Self {
        Background { status_rx, audit }
    }

    pub(super) fn start(self, relay: &Arc<Relay>) -> Writers {
        let stop = CancellationToken::new();
        Writers {
            status: tokio::spawn(write_status(
                relay.store.clone(),
                self.status_rx,
                relay.status_written.clone(),
                stop.clone(),
            )),
            audit: tokio::spawn(audit::run_writer(
                relay.store.clone(),
                self.audit,
                relay.options.audit_retention,
                stop.clone(),
            )),
            floods: tokio::spawn(sweep_floods(relay.clone(), stop.clone())),
            stop,
        }
    }
}

impl Writers {
    /// Records the last flood summaries, then stores every queued status
    /// change and audit event, and returns when both writers are done.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = self.floods.await;
        let _ = self.status.await;
        let _ = self.audit.await;
    }
}

async fn write_status(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<StatusChange>,
    written: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            biased;
            change = rx.recv() => change,
            _ = stop.cancelled() => {
                // Connections are closed: apply what they queued, then stop.
                while let Ok(change) = rx.try_recv() {
                    apply_status(&store, change).await;
                    written.send_modify(|n| *n += 1);
                }
                return;
            }
        };
        let Some(change) = change else { return };
        // What else is queued goes with it: a registration storm's claims
        // are written a batch per transaction.
        let mut batch = vec![change];
        while batch.len() < STATUS_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        for run in runs(batch) {
            // In order: a change the store refused (its database is away)
            // is tried again before any later one, until it is written or
            // the relay stops.
            while !apply_run(&store, run.clone()).await {
                tokio::select! {
                    _ = tokio::time::sleep(STATUS_RETRY_INTERVAL) => {}
                    _ = stop.cancelled() => break,
                }
            }
            written.send_modify(|n| *n += run.len() as u64);
        }
    }
}

/// Status changes written at most at once.
const STATUS_BATCH: usize = 256;

/// `batch` cut into runs written at once: consecutive `Up`s together, any
/// other change alone, in order.
fn runs(batch: Vec<StatusChange>) -> Vec<Vec<StatusChange>> {
    let mut out: Vec<Vec<StatusChange>> = Vec::new();
    for change in batch {
        let up = matches!(change, StatusChange::Up { .. });
        match out.last_mut() {
            Some(run) if up && matches!(run.last(), Some(StatusChange::Up { .. })) => {
                run.push(change)
            }
            _ => out.push(vec![change]),
        }
    }
    out
}

/// Writes a run of [`runs`]; false if the store refused it.
async fn apply_run(store: &Store, mut run: Vec<StatusChange>) -> bool {
    if run.len() == 1
        && let Some(change) = run.pop()
    {
        return apply_status(store, change).await;
    }
    let ups: Vec<DeviceUp> = run
        .into_iter()
        .filter_map(|c| match c {
            StatusChange::Up {
                device,
                peer,
                ports,
                info,
            } => Some(DeviceUp {
                system: device.system.to_string(),
                name: device.name.to_string(),
                peer,
                ports,
                info,
            }),
            _ => None,
        })
        .collect();
    match store.call(move |s| s.devices_up(&ups)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writing device status");
            false
        }
    }
}

/// Writes one status change; false if the store refused it.
async fn apply_status(store: &Store, change: StatusChange) -> bool {
    let result = store
        .call(move |s| match change {
            StatusChange::Up {
                device,
                peer,
                ports,
                info,
            } => {
                // One transaction on PostgreSQL (the claim and the flag);
                // on SQLite the row, then the flag, as before.
                s.devices_up(&[DeviceUp {
                    system: device.system.to_string(),
                    name: device.name.to_string(),
                    peer,
                    ports,
                    info,
                }])
            }
            StatusChange::Down { device } => {
                s.device_down(device.system.as_str(), device.name.as_str())
            }
            StatusChange::Touch(list) => {
                let list: Vec<(String, String, u64)> = list
                    .into_iter()
                    .map(|(d, streams)| (d.system.to_string(), d.name.to_string(), streams))
                    .collect();
                s.touch_devices(&list)
            }
        })
        .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writing device status");
            false
        }
    }
}

/// Notices key changes made by `warren admin` in another process, and closes
/// connections of keys that were revoked.
pub(super) async fn watch_store(relay: Arc<Relay>) {
    let stop = relay.shutting_down.clone();
    let mut last = relay.store.data_version().ok();
    let mut tick = tokio::time::interval(relay.options.store_poll);
    loop {
        let mut forced = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = relay.store_changed.notified() => forced = true,
        }
        let version = match relay.store.call(|s| s.data_version()).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading store version");
                continue;
            }
        };
        if version == last && !forced {
            continue;
        }
        last = version;
        gateways::refresh(&relay).await;
        apply_disabled(&relay).await;
        apply_rates(&relay).await;
        // `warren admin expose` may have changed public ports.
        relay.expose_wake.notify_one();
        let conns = relay.registry.conns();
        let fps: Vec<Fingerprint> = conns.iter().map(|c| c.fingerprint.clone()).collect();
        let active = relay.store.call(move |s| s.keys_active(&fps)).await;
        let Ok(active) = active else {
            relay.rechecks.send_modify(|n| *n += 1);
            continue;
        };
        for (conn, ok) in conns.iter().zip(active) {
            if !ok {
                relay.audit.record(
                    audit::Event::new(audit::kind::KEY_REVOKED_DISCONNECT, audit::OK)
                        .system(conn.system.as_str())
                        .key(conn.name.as_str(), conn.fingerprint.as_str()),
                );
                conn.handle.disconnect("your key was revoked").await;
            }
        }
        relay.rechecks.send_modify(|n| *n += 1);
    }
}

/// Records a summary for each address whose aggregated events were
/// counted and not recorded, once their window is over (and at shutdown).
async fn sweep_floods(relay: Arc<Relay>, stop: CancellationToken) {
    let window = relay.floods.window();
    let mut tick = tokio::time::interval(window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = tokio::select! {
            _ = stop.cancelled() => std::time::Instant::now() + window,
            _ = tick.tick() => std::time::Instant::now(),
        };
        for (ip, flood, n) in relay.floods.sweep(now) {
            // Each was counted in the metrics as it happened.
            relay
                .audit
                .record_counted(flood_summary(ip, flood, n, window));
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

fn flood_summary(
    ip: std::net::IpAddr,
    flood: ratelimit::Flood,
    n: u64,
    window: Duration,
) -> audit::Event {
    use ratelimit::Flood;
    let (kind, result, what) = match flood {
        Flood::EnrollLogin => (audit::kind::LOGIN, audit::OK, "enroll logins"),
        Flood::EnrollRefused => (
            audit::kind::LOGIN,
            audit::REFUSED,
            "enroll logins not completed",
        ),
        Flood::KeyProbe => (audit::kind::KEY_PROBE, audit::REFUSED, "key probes"),
        Flood::OverCap => (
            audit::kind::LOGIN,
            audit::REFUSED,
            "connections closed over the cap on unauthenticated ones",
        ),
    };
    let from = if ip == ratelimit::ANY_ADDRESS {
        "any address".to_string()
    } else {
        ip.to_string()
    };
    let mut e = audit::Event::new(kind, result).detail(format!(
        "{n} more {what} from {from} within {window:?}, counted, not recorded one by one"
    ));
    if matches!(flood, Flood::EnrollLogin | Flood::EnrollRefused) {
        e = e.system(crate::protocol::token::ENROLL_USER);
    }
    if flood == Flood::OverCap {
        e = e.reason(audit::login_reason::TOO_MANY_UNAUTHENTICATED);
    }
    e.peer = (ip != ratelimit::ANY_ADDRESS).then(|| ip.to_string());
    e
}

pub(super) async fn flush_last_seen(relay: Arc<Relay>) {
    let stop = relay.shutting_down.clone();
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let online: Vec<(DeviceId, u64)> = relay
            .registry
            .online(None)
            .into_iter()
            .map(|(d, _)| {
                let streams = relay.registry.stream_count(&d) as u64;
                (d, streams)
            })
            .collect();
        if !online.is_empty() {
            relay.status(StatusChange::Touch(online));
        }
    }
}

/// Loads the disabled devices from the store into the registry, which
/// closes the live streams of any newly disabled device.
pub(super) async fn apply_disabled(relay: &Relay) {
    let list = match relay.store.call(|s| s.disabled_devices()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reading disabled devices");
            return;
        }
    };
    let closed = relay.registry.set_disabled(list.into_iter().collect());
    if closed > 0 {
        tracing::info!(closed, "closed live streams of disabled devices");
    }
}

/// Loads the bandwidth limits from the store and applies them to live
/// streams at once.
pub(super) async fn apply_rates(relay: &Relay) {
    let rates = match relay.store.call(|s| s.rates()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reading bandwidth limits");
            return;
        }
    };
    let stored = rates
        .into_iter()
        .filter_map(|r| {
            Some(super::bandwidth::StoredRate {
                system: crate::protocol::Name::parse(&r.system).ok()?,
                device: match r.device {
                    Some(d) => Some(crate::protocol::Name::parse(&d).ok()?),
                    None => None,
                },
                rate: r.rate,
            })
        })
        .collect();
    relay.bandwidth.set(stored);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Name;

    fn id(n: &str) -> DeviceId {
        DeviceId::new(Name::parse("tau").unwrap(), Name::parse(n).unwrap())
    }

    fn up(n: &str) -> StatusChange {
        StatusChange::Up {
            device: id(n),
            peer: "192.0.2.1:1".parse().unwrap(),
            ports: vec![22],
            info: Default::default(),
        }
    }

    fn shape(runs: &[Vec<StatusChange>]) -> Vec<Vec<String>> {
        runs.iter()
            .map(|r| {
                r.iter()
                    .map(|c| match c {
                        StatusChange::Up { device, .. } => format!("up {}", device.name),
                        StatusChange::Down { device } => format!("down {}", device.name),
                        StatusChange::Touch(l) => format!("touch {}", l.len()),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn consecutive_registrations_go_together_and_everything_stays_in_order() {
        let batch = vec![
            up("a"),
            up("b"),
            StatusChange::Down { device: id("a") },
            up("c"),
            StatusChange::Touch(vec![(id("b"), 0)]),
            up("d"),
            up("e"),
            up("a"),
        ];
        let want: Vec<Vec<&str>> = vec![
            vec!["up a", "up b"],
            vec!["down a"],
            vec!["up c"],
            vec!["touch 1"],
            vec!["up d", "up e", "up a"],
        ];
        assert_eq!(shape(&runs(batch)), want);
    }
}
