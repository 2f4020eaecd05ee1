//! The listening connection: `LISTEN warren` (keys, disabled devices,
//! gateways, public ports changed) and `LISTEN warren_owner` (a relay
//! claimed a device). Every notification bumps the store's version, which
//! the relay polls (`Store::data_version`) and then re-checks everything
//! (revoked keys, disabled devices, gateways, public ports). Notifications
//! sent while the connection was down are lost, so each (re)connection
//! bumps the version too: a full resync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};

use super::Claim;
use super::holders::Holders;
use crate::protocol::limits::DATABASE_LISTEN_RETRY;

/// What the listening connection updates (the store's shared state).
pub(super) struct Listener {
    pub config: tokio_postgres::Config,
    pub version: Arc<AtomicI64>,
    pub changed: Arc<tokio::sync::Notify>,
    pub listening: Arc<AtomicBool>,
    pub relay: Arc<Mutex<Option<String>>>,
    pub epochs: Arc<Mutex<HashMap<(String, String), i64>>>,
    pub lost: broadcast::Sender<(String, String)>,
    pub holders: Arc<Holders>,
}

pub(super) async fn run(l: Listener) {
    let Listener {
        config,
        version,
        changed,
        listening,
        relay,
        epochs,
        lost,
        holders,
    } = l;
    let mut was_down = false;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let drive = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(|cx| conn.poll_message(cx));
                    while let Some(Ok(m)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = m
                            && tx.send(n).is_err()
                        {
                            return;
                        }
                    }
                });
                if client
                    .batch_execute("LISTEN warren; LISTEN warren_owner")
                    .await
                    .is_ok()
                {
                    if let Err(e) = held_elsewhere(&client, &relay, &epochs, &lost).await {
                        tracing::warn!(error = %e, "checking which devices other relays claimed");
                    }
                    if let Err(e) = load_holders(&client, &holders).await {
                        tracing::warn!(error = %e, "reading which relay holds each device");
                    }
                    listening.store(true, Ordering::Relaxed);
                    // Whatever changed while nobody listened: resync.
                    version.fetch_add(1, Ordering::Relaxed);
                    changed.notify_waiters();
                    if was_down {
                        tracing::info!("database reachable again; resyncing");
                    }
                    while let Some(n) = rx.recv().await {
                        // A claim changes no key, rule or setting: it wakes
                        // the waiters (a wake waiting for the device to be
                        // online anywhere) without moving the version, so a
                        // registration storm elsewhere does not have this
                        // relay re-check every key once per device.
                        if n.channel() == "warren_owner" {
                            if claimed(n.payload(), &relay, &epochs, &lost, &holders) {
                                // A relay that joined since: whose claims a
                                // hop may follow now rather than at the next beat.
                                if let Ok(relays) = super::cluster::read_relays(&client).await {
                                    holders.set_relays(relays, crate::store::now());
                                }
                            }
                        } else {
                            version.fetch_add(1, Ordering::Relaxed);
                        }
                        changed.notify_waiters();
                    }
                }
                drive.abort();
                listening.store(false, Ordering::Relaxed);
                tracing::warn!("lost the database's listening connection; reconnecting");
                was_down = true;
            }
            Err(e) => {
                if !was_down {
                    tracing::warn!(error = %e, "cannot listen for database changes; retrying");
                }
                was_down = true;
            }
        }
        tokio::time::sleep(DATABASE_LISTEN_RETRY).await;
    }
}

/// A relay claimed a device: if this relay holds it under an older epoch,
/// it lost it (the device reconnected elsewhere). True if the claim names a
/// relay the holder map does not know yet.
fn claimed(
    payload: &str,
    relay: &Mutex<Option<String>>,
    epochs: &Mutex<HashMap<(String, String), i64>>,
    lost: &broadcast::Sender<(String, String)>,
    holders: &Holders,
) -> bool {
    let Ok(claim) = serde_json::from_str::<Claim>(payload) else {
        tracing::warn!(payload, "unreadable device claim");
        return false;
    };
    let unknown = holders.apply(&claim);
    if !claim.online {
        return unknown;
    }
    let me = relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if Some(&claim.relay) == me.as_ref() || (me.is_none() && claim.relay.is_empty()) {
        return unknown;
    }
    let key = (claim.system, claim.name);
    let mut epochs = epochs.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mine) = epochs.get(&key)
        && *mine < claim.epoch
    {
        epochs.remove(&key);
        drop(epochs);
        let _ = lost.send(key);
    }
    unknown
}

/// After (re)connecting: claims made while nobody listened are lost, so
/// each device this relay holds is looked up; those another relay claimed
/// since (or that a later epoch holds) are lost.
async fn held_elsewhere(
    client: &tokio_postgres::Client,
    relay: &Mutex<Option<String>>,
    epochs: &Mutex<HashMap<(String, String), i64>>,
    lost: &broadcast::Sender<(String, String)>,
) -> Result<(), tokio_postgres::Error> {
    let me = relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let held: Vec<((String, String), i64)> = epochs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for ((system, name), epoch) in held {
        let row = client
            .query_opt(
                "SELECT relay, epoch FROM devices WHERE system = $1 AND name = $2",
                &[&system, &name],
            )
            .await?;
        let Some(row) = row else { continue };
        let (holder, now): (Option<String>, i64) = (row.try_get(0)?, row.try_get(1)?);
        if holder != me || now > epoch {
            let key = (system, name);
            let mut map = epochs.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key) == Some(&epoch) {
                map.remove(&key);
                drop(map);
                let _ = lost.send(key);
            }
        }
    }
    Ok(())
}

/// After (re)connecting: which relay holds each device online, from the
/// store (claims sent while nobody listened are lost). Claims that arrive
/// meanwhile wait in the listening connection and apply after, by epoch.
async fn load_holders(
    client: &tokio_postgres::Client,
    holders: &Holders,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT system, name, relay, epoch FROM devices WHERE online = 1 AND relay IS NOT NULL",
            &[],
        )
        .await?;
    let mut claims = Vec::with_capacity(rows.len());
    for r in rows {
        claims.push(Claim {
            system: r.try_get(0)?,
            name: r.try_get(1)?,
            relay: r.try_get(2)?,
            epoch: r.try_get(3)?,
            online: true,
        });
    }
    holders.load(&claims);
    if let Ok(relays) = super::cluster::read_relays(client).await {
        holders.set_relays(relays, crate::store::now());
    }
    Ok(())
}
