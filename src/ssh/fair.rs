//! Fair shares of the runtime's workers between tenants.
//!
//! A [`Share`] is a FIFO of turns (a fair semaphore): a connection that
//! moves bulk data takes a turn before each slice of that work and gives
//! it back at the end of the slice or when it goes idle, then queues
//! behind the others of its share. A share has as many turns as the
//! runtime has workers, so one tenant alone still uses every core, while
//! a tenant with many busy connections has at most that many of them
//! runnable at once: another tenant's message waits behind at most one
//! slice per worker, not one per busy connection. Connections that move
//! little (interactive traffic) never take a turn.
//!
//! Taking a free turn is one uncontended atomic operation, and happens
//! once per slice or per wake of a bulk connection, never per packet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One tenant's turns (clones share them).
#[derive(Clone)]
pub struct Share(Arc<Inner>);

struct Inner {
    turns: Arc<Semaphore>,
    size: usize,
    /// Turns taken, and those that had to wait for another to end.
    taken: AtomicU64,
    waited: AtomicU64,
}

/// A turn held: given back (to the first waiter) when dropped.
/// (`None`: the semaphore was closed, which never happens.)
pub struct Turn(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Share {
    /// A share of `turns` turns (at least one).
    pub fn new(turns: usize) -> Share {
        let size = turns.max(1);
        Share(Arc::new(Inner {
            turns: Arc::new(Semaphore::new(size)),
            size,
            taken: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }))
    }

    /// A share with one turn per worker of the current runtime.
    pub fn per_worker() -> Share {
        Share::new(workers())
    }

    /// Waits for a turn, behind every connection that asked before.
    pub async fn turn(&self) -> Turn {
        self.0.taken.fetch_add(1, Ordering::Relaxed);
        if let Ok(p) = self.0.turns.clone().try_acquire_owned() {
            return Turn(Some(p));
        }
        self.0.waited.fetch_add(1, Ordering::Relaxed);
        Turn(self.0.turns.clone().acquire_owned().await.ok())
    }

    /// A turn if one is free now, without queueing.
    pub fn try_turn(&self) -> Option<Turn> {
        let p = self.0.turns.clone().try_acquire_owned().ok()?;
        self.0.taken.fetch_add(1, Ordering::Relaxed);
        Some(Turn(Some(p)))
    }

    /// How many turns the share has.
    pub fn size(&self) -> usize {
        self.0.size
    }

    /// Turns held now.
    pub fn held(&self) -> usize {
        self.0.size - self.0.turns.available_permits().min(self.0.size)
    }

    /// Turns taken so far, and how many of them waited.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.taken.load(Ordering::Relaxed),
            self.0.waited.load(Ordering::Relaxed),
        )
    }

    /// Whether nothing but this handle uses the share.
    pub fn unused(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Whether `self` and `other` are the same tenant's share.
    pub fn same(&self, other: &Share) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Worker threads of the current runtime (1 outside one).
pub fn workers() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_lone_tenant_gets_every_turn_at_once() {
        let s = Share::new(3);
        let a = s.turn().await;
        let b = s.turn().await;
        let c = s.turn().await;
        assert_eq!(s.held(), 3);
        assert!(s.try_turn().is_none(), "three turns only");
        drop((a, b, c));
        assert_eq!(s.held(), 0);
        assert_eq!(s.counts(), (3, 0), "none waited");
    }

    /// Tenant A has 16 contenders cycling through 2 turns; B's connection,
    /// asking in the middle, gets its turn at once, and each of A's waiting
    /// contenders gets one after at most 15 others (FIFO), never starved.
    /// One thread: the order turns are granted in is then the order they
    /// are recorded in (two workers may record them out of order).
    #[tokio::test]
    async fn another_tenant_never_waits_and_contenders_take_turns_in_order() {
        let a = Share::new(2);
        let b = Share::new(2);
        let order = Arc::new(Mutex::new(Vec::<usize>::new()));
        let mut held = vec![a.turn().await, a.turn().await];
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (mine, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    let t = mine.turn().await;
                    order.lock().unwrap().push(i);
                    tokio::task::yield_now().await;
                    drop(t);
                }
            }));
            // Each contender is queued before the next one starts.
            while a.counts().1 < i as u64 + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(b.try_turn().is_some(), "B's turn does not wait behind A's");
        assert_eq!(b.counts().1, 0);
        held.clear();
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 48);
        // The first round is in the order they queued.
        assert_eq!(order[..16], (0..16).collect::<Vec<_>>()[..]);
        // Nobody gets a second turn before everyone had a first, and so on:
        // between two turns of one contender, at most 15 + 2 others.
        for i in 0..16 {
            let at: Vec<usize> = (0..48).filter(|&k| order[k] == i).collect();
            for w in at.windows(2) {
                assert!(w[1] - w[0] <= 17, "contender {i} waited {}", w[1] - w[0]);
            }
        }
    }

    #[test]
    fn outside_a_runtime_a_share_has_one_turn() {
        assert_eq!(Share::per_worker().size(), 1);
        let s = Share::new(0);
        assert_eq!(s.size(), 1, "never zero turns");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_worker_counts_the_runtimes_workers() {
        assert_eq!(Share::per_worker().size(), 2);
    }
}
