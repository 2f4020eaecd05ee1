//! Which relay of the cluster holds each device, kept in memory from the
//! claims the listening connection receives (`warren_owner`), so that a
//! stream to a device on another relay finds its hop without a query.
//!
//! Every claim names the relay and the claim's epoch, which grows with each
//! claim of the device: a claim replaces what the map knows unless it is
//! older. A device that goes offline sends a notification too (its epoch,
//! `online: false`), and a relay that starts sends one for all it held
//! before (`name` empty). A relay that died sends nothing: its heartbeat
//! stops, and a holder whose heartbeat is older than three intervals (as the
//! store sees it) holds nothing. Whenever the listening connection
//! (re)connects, the map is loaded afresh from the store (notifications
//! sent while it was down are lost).
//!
//! The map keys a device by a 64-bit hash of its system and name and keeps
//! the relay as an index: about 30 bytes per device of the whole cluster
//! (95,000 devices: under 3 MB per relay). Two devices whose hashes collide
//! would share an entry; the hop then asks the wrong relay, which refuses,
//! and the next claim of either device corrects it.
//!
//! The map can be behind the store: a relay killed a moment ago still beats
//! (as far as the registry says) for up to three intervals, and a claim
//! made elsewhere may not have arrived yet. A hop that finds the map wrong
//! (the relay it names cannot be reached, or no longer holds the device)
//! asks the store, hops where the store says, and corrects the map with
//! what it read ([`Holders::correct`]); a relay that could not be reached
//! counts as holding nothing ([`Holders::unreachable`]) until the registry
//! shows it beating again, so the streams after the first do not try it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Claim, RelayRecord};
use crate::protocol::limits::RELAY_HEARTBEAT_INTERVAL;

#[derive(Default)]
pub(super) struct Holders {
    inner: Mutex<Inner>,
    /// Holder lookups the map could not answer, which asked the store.
    pub(super) queries: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Device (hash) → (relay index in `ids`, epoch of the claim).
    map: HashMap<u64, (u32, i64)>,
    ids: Vec<String>,
    /// The registry of relays as last read, and the store's clock then.
    relays: HashMap<String, RelayRecord>,
    read_at: u64,
    /// Relays a hop could not reach, with their heartbeat then: what they
    /// hold is stale until the registry shows a later beat.
    unreachable: HashMap<String, u64>,
}

/// What the map says of a device.
pub(super) enum Known {
    /// No entry: ask the store.
    Unknown,
    /// Held by this relay (no hop).
    Here,
    /// Held by a relay that beats.
    By(RelayRecord),
    /// Held by a relay the map does not know or whose heartbeat stopped:
    /// ask the store.
    Stale,
}

fn key(system: &str, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (system, name).hash(&mut h);
    h.finish()
}

impl Inner {
    fn index(&mut self, relay: &str) -> u32 {
        match self.ids.iter().position(|r| r == relay) {
            Some(i) => i as u32,
            None => {
                self.ids.push(relay.to_string());
                (self.ids.len() - 1) as u32
            }
        }
    }

    fn apply(&mut self, c: &Claim) {
        let relay = self.index(&c.relay);
        if c.name.is_empty() {
            // The relay (re)started: it holds none of its claims so far
            // (notifications arrive in commit order, so its later claims
            // come after this).
            self.map.retain(|_, (r, _)| *r != relay);
            return;
        }
        let k = key(&c.system, &c.name);
        match self.map.get(&k) {
            Some((_, epoch)) if *epoch > c.epoch => {}
            Some((r, epoch)) if !c.online && (*r != relay || *epoch != c.epoch) => {}
            _ if !c.online => {
                self.map.remove(&k);
            }
            _ => {
                self.map.insert(k, (relay, c.epoch));
            }
        }
    }
}

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A claim (or a device down) as the listening connection received it;
    /// true if it names a relay not in the registry as last read (a relay
    /// that joined since: the caller reads the registry again).
    pub(super) fn apply(&self, c: &Claim) -> bool {
        let mut inner = self.lock();
        inner.apply(c);
        c.online && !c.relay.is_empty() && !inner.relays.contains_key(&c.relay)
    }

    /// Replaces the map with the store's devices online now.
    pub(super) fn load(&self, claims: &[Claim]) {
        let mut inner = self.lock();
        inner.map.clear();
        for c in claims {
            inner.apply(c);
        }
        inner.map.shrink_to_fit();
    }

    /// The registry of relays as the store showed it at `at` (its clock).
    pub(super) fn set_relays(&self, relays: Vec<RelayRecord>, at: u64) {
        let mut inner = self.lock();
        inner.relays = relays.into_iter().map(|r| (r.id.clone(), r)).collect();
        inner.read_at = at;
        let Inner {
            relays,
            unreachable,
            ..
        } = &mut *inner;
        unreachable.retain(|id, beat| relays.get(id).is_some_and(|r| r.heartbeat <= *beat));
    }

    /// A hop could not reach `relay`: until the registry shows it beating
    /// after now, what the map says it holds is stale (the store decides).
    pub(super) fn unreachable(&self, relay: &str) {
        let mut inner = self.lock();
        let beat = inner.relays.get(relay).map_or(0, |r| r.heartbeat);
        inner.unreachable.insert(relay.to_string(), beat);
    }

    /// What the store said of a device after a hop found the map wrong: its
    /// claim, applied as a received one (a later claim still wins).
    pub(super) fn correct(&self, c: &Claim) {
        self.lock().apply(c);
    }

    pub(super) fn known(&self, system: &str, name: &str, me: Option<&str>) -> Known {
        let inner = self.lock();
        let Some((relay, _)) = inner.map.get(&key(system, name)) else {
            return Known::Unknown;
        };
        let id = &inner.ids[*relay as usize];
        if Some(id.as_str()) == me {
            return Known::Here;
        }
        let dead = inner
            .read_at
            .saturating_sub(3 * RELAY_HEARTBEAT_INTERVAL.as_secs());
        let reachable = |r: &RelayRecord| {
            inner
                .unreachable
                .get(id)
                .is_none_or(|beat| r.heartbeat > *beat)
        };
        match inner.relays.get(id) {
            Some(r) if r.heartbeat >= dead && reachable(r) => Known::By(r.clone()),
            _ => Known::Stale,
        }
    }

    pub(super) fn queried(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, relay: &str, epoch: i64, online: bool) -> Claim {
        Claim {
            system: "tau".into(),
            name: name.into(),
            relay: relay.into(),
            epoch,
            online,
        }
    }

    fn record(id: &str, heartbeat: u64) -> RelayRecord {
        RelayRecord {
            id: id.into(),
            address: Some("127.0.0.1:1".into()),
            host_key: "SHA256:x".into(),
            started: 0,
            heartbeat,
        }
    }

    fn holder(h: &Holders, name: &str) -> String {
        match h.known("tau", name, Some("me")) {
            Known::Unknown => "unknown".into(),
            Known::Here => "here".into(),
            Known::By(r) => r.id,
            Known::Stale => "stale".into(),
        }
    }

    #[test]
    fn the_latest_claim_wins_a_down_removes_only_its_own_claim_and_dead_relays_hold_nothing() {
        let h = Holders::default();
        h.set_relays(vec![record("b", 100), record("c", 100)], 100);
        h.apply(&claim("d1", "b", 1, true));
        assert_eq!(holder(&h, "d1"), "b");
        // A late, older claim changes nothing; a newer one moves it.
        h.apply(&claim("d1", "c", 2, true));
        h.apply(&claim("d1", "b", 1, true));
        assert_eq!(holder(&h, "d1"), "c");
        // B's late down (its old epoch) does not remove C's claim.
        h.apply(&claim("d1", "b", 1, false));
        assert_eq!(holder(&h, "d1"), "c");
        h.apply(&claim("d1", "c", 2, false));
        assert_eq!(holder(&h, "d1"), "unknown");
        h.apply(&claim("d2", "me", 3, true));
        assert_eq!(holder(&h, "d2"), "here");
        // C stops beating: what it held is stale (the store decides).
        h.apply(&claim("d3", "c", 1, true));
        h.set_relays(vec![record("b", 200), record("c", 184)], 200);
        assert_eq!(holder(&h, "d3"), "stale");
        assert!(
            h.apply(&claim("d4", "x", 1, true)),
            "x: a relay unknown so far"
        );
        assert!(!h.apply(&claim("d4", "b", 2, true)));
        h.apply(&claim("d4", "x", 3, true));
        assert_eq!(holder(&h, "d4"), "stale");
        // B restarts: its claims so far are gone, later ones stay.
        h.apply(&claim("d5", "b", 4, true));
        h.apply(&claim("", "b", 0, false));
        h.apply(&claim("d6", "b", 9, true));
        assert_eq!(holder(&h, "d5"), "unknown");
        assert_eq!(holder(&h, "d6"), "b");
        h.load(&[claim("d7", "b", 1, true)]);
        assert_eq!(h.len(), 1);
        assert_eq!(holder(&h, "d7"), "b");
    }

    #[test]
    fn a_relay_a_hop_could_not_reach_holds_nothing_until_it_beats_again_and_the_store_corrects_the_map()
     {
        let h = Holders::default();
        h.set_relays(vec![record("b", 100), record("c", 100)], 100);
        h.apply(&claim("d1", "b", 1, true));
        h.apply(&claim("d2", "b", 1, true));
        h.apply(&claim("d3", "c", 1, true));
        h.unreachable("b");
        assert_eq!(holder(&h, "d1"), "stale", "b could not be reached");
        assert_eq!(holder(&h, "d3"), "c", "c is not concerned");
        // The registry read again: b has not beaten since; still stale.
        h.set_relays(vec![record("b", 100), record("c", 105)], 105);
        assert_eq!(holder(&h, "d2"), "stale");
        // The store said c holds d1 now (epoch 2): the map follows.
        h.correct(&claim("d1", "c", 2, true));
        assert_eq!(holder(&h, "d1"), "c");
        // An older claim read from the store does not undo a newer one.
        h.apply(&claim("d3", "c", 5, true));
        h.correct(&claim("d3", "b", 4, true));
        assert_eq!(holder(&h, "d3"), "c");
        // b beats again (it was only away a moment): what it holds counts.
        h.set_relays(vec![record("b", 106), record("c", 106)], 106);
        assert_eq!(holder(&h, "d2"), "b");
    }
}
