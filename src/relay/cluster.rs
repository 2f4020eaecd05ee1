//! The relay's part in a cluster on PostgreSQL (`--database`): when a
//! device this relay holds reconnects to another relay, the other relay's
//! claim arrives here (the store's listening connection), and this relay
//! closes its stale connection, as one relay does when a device reconnects
//! to it.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::Relay;
use crate::audit;
use crate::protocol::Name;

/// Closes the connections of devices that another relay claimed since.
pub(super) async fn close_lost(relay: Arc<Relay>) {
    let Some(pg) = relay.store.postgres() else {
        return;
    };
    let mut lost = pg.lost_devices();
    let stop = relay.shutting_down.clone();
    loop {
        let (system, name) = tokio::select! {
            _ = stop.cancelled() => return,
            m = lost.recv() => match m {
                Ok(m) => m,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed device claims of other relays");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        let (Ok(s), Ok(n)) = (Name::parse(&system), Name::parse(&name)) else {
            continue;
        };
        let Some(entry) = relay.registry.lookup(&s, &n) else {
            continue;
        };
        relay.audit.record(
            audit::Event::new(audit::kind::DEVICE_DOWN, audit::OK)
                .system(system.as_str())
                .device(name.as_str())
                .peer(entry.peer)
                .detail("the device connected to another relay of the cluster"),
        );
        entry
            .handle
            .disconnect("this device connected to another relay")
            .await;
    }
}

/// Has the relay re-check the store as soon as the database notifies a
/// change that moves the store's version (rather than at its next poll);
/// other relays' device claims do not.
pub(super) async fn wake_on_change(relay: Arc<Relay>) {
    let Some(pg) = relay.store.postgres() else {
        return;
    };
    let stop = relay.shutting_down.clone();
    let mut last = pg.data_version();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = pg.changed() => {
                let now = pg.data_version();
                if now != last {
                    last = now;
                    relay.store_changed.notify_one();
                }
            }
        }
    }
}
