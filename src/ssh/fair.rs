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
//! Shares made by one [`Tenants`] also know about each other: every
//! connection whose round of work moved channel data marks its tenant
//! active ([`Share::active`], at most once per [`ACTIVE_MARK_EVERY`];
//! keepalives, logins and channels opened without data do not), and while another tenant was active within
//! [`ACTIVE_WINDOW`], a share of more than one turn keeps one of them back
//! (it holds it itself), so a bulk tenant leaves one worker free for the
//! others' traffic instead of filling every worker with its slices. Alone
//! again, it gets the turn back at its next turn.
//!
//! Taking a free turn is one uncontended atomic operation, and happens
//! once per slice or per wake of a bulk connection, never per packet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Another tenant counts as active this long after it last moved channel
/// data.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

/// A connection marks its tenant active at most this often.
pub const ACTIVE_MARK_EVERY: Duration = Duration::from_millis(10);

/// One tenant's turns (clones share them).
#[derive(Clone)]
pub struct Share(Arc<Inner>);

struct Inner {
    turns: Arc<Semaphore>,
    size: usize,
    /// Turns taken, and those that had to wait for another to end.
    taken: AtomicU64,
    waited: AtomicU64,
    /// The tenants this share knows about (`None`: a share on its own).
    tenants: Option<Arc<Tenants>>,
    id: u64,
    /// The turn kept back while another tenant is active.
    kept: Mutex<Option<OwnedSemaphorePermit>>,
    /// A turn() is queueing for the turn to keep back.
    keeping: AtomicBool,
    /// Times a turn was kept back.
    kept_count: AtomicU64,
    trace: Option<Trace>,
}

/// A turn held: given back (to the first waiter) when dropped.
/// (`None`: the semaphore was closed, which never happens.)
pub struct Turn(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Share {
    /// A share of `turns` turns (at least one), on its own: never kept
    /// back for another tenant.
    pub fn new(turns: usize) -> Share {
        Share::make(turns, None, 0, None)
    }

    fn make(turns: usize, tenants: Option<Arc<Tenants>>, id: u64, trace: Option<Trace>) -> Share {
        let size = turns.max(1);
        Share(Arc::new(Inner {
            turns: Arc::new(Semaphore::new(size)),
            size,
            taken: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            tenants,
            id,
            kept: Mutex::new(None),
            keeping: AtomicBool::new(false),
            kept_count: AtomicU64::new(0),
            trace,
        }))
    }

    /// A share with one turn per worker of the current runtime.
    pub fn per_worker() -> Share {
        Share::new(workers())
    }

    /// Waits for a turn, behind every connection that asked before.
    pub async fn turn(&self) -> Turn {
        if self.should_keep_one(Instant::now()) && !self.0.keeping.swap(true, Ordering::AcqRel) {
            // Queue for the turn to keep back like any other: the tenant's
            // running slices end first.
            let _reset = Keeping(&self.0.keeping);
            if let Ok(p) = self.0.turns.clone().acquire_owned().await {
                self.keep(p);
            }
        }
        self.0.taken.fetch_add(1, Ordering::Relaxed);
        if let Ok(p) = self.0.turns.clone().try_acquire_owned() {
            return Turn(Some(p));
        }
        self.0.waited.fetch_add(1, Ordering::Relaxed);
        Turn(self.0.turns.clone().acquire_owned().await.ok())
    }

    /// A turn if one is free now, without queueing.
    pub fn try_turn(&self) -> Option<Turn> {
        if self.should_keep_one(Instant::now())
            && let Ok(p) = self.0.turns.clone().try_acquire_owned()
        {
            self.keep(p);
        }
        let p = self.0.turns.clone().try_acquire_owned().ok()?;
        self.0.taken.fetch_add(1, Ordering::Relaxed);
        Some(Turn(Some(p)))
    }

    /// Whether a turn should be kept back now (another tenant active and
    /// none kept yet); gives a kept turn back once the others are quiet.
    fn should_keep_one(&self, now: Instant) -> bool {
        let Some(tenants) = &self.0.tenants else {
            return false;
        };
        if self.0.size < 2 {
            return false;
        }
        if !tenants.keep {
            return false;
        }
        let others = tenants.others_active(self.0.id, now);
        let mut kept = self.0.kept.lock().unwrap_or_else(|p| p.into_inner());
        if !others {
            *kept = None;
        }
        others && kept.is_none()
    }

    fn keep(&self, p: OwnedSemaphorePermit) {
        let mut kept = self.0.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.is_none() {
            *kept = Some(p);
            self.0.kept_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks this tenant active at `now` (see [`Tenants`]).
    pub fn active(&self, now: Instant) {
        if let Some(t) = &self.0.tenants {
            t.mark(self.0.id, now);
        }
    }

    /// Whether another tenant of its [`Tenants`] was active within
    /// [`ACTIVE_WINDOW`] before `now` (never for a share on its own).
    pub fn others_active(&self, now: Instant) -> bool {
        self.0
            .tenants
            .as_ref()
            .is_some_and(|t| t.others_active(self.0.id, now))
    }

    /// How many turns the share has.
    pub fn size(&self) -> usize {
        self.0.size
    }

    /// Turns its connections may hold now: one fewer while one is kept back.
    pub fn limit(&self) -> usize {
        self.0.size - usize::from(self.kept())
    }

    fn kept(&self) -> bool {
        self.0
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Turns held by connections now (a kept-back turn not counted).
    pub fn held(&self) -> usize {
        let all = self.0.size - self.0.turns.available_permits().min(self.0.size);
        all - usize::from(self.kept()).min(all)
    }

    /// Turns taken so far, and how many of them waited.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.taken.load(Ordering::Relaxed),
            self.0.waited.load(Ordering::Relaxed),
        )
    }

    /// Times a turn was kept back for another tenant.
    pub fn kept_back(&self) -> u64 {
        self.0.kept_count.load(Ordering::Relaxed)
    }

    /// Whether nothing but this handle uses the share.
    pub fn unused(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Whether `self` and `other` are the same tenant's share.
    pub fn same(&self, other: &Share) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The delay trace of this tenant's messages, if it is traced.
    pub fn trace(&self) -> Option<&Trace> {
        self.0.trace.as_ref()
    }
}

/// Resets the `keeping` flag when the queueing turn() ends or is dropped.
struct Keeping<'a>(&'a AtomicBool);

impl Drop for Keeping<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The tenants of one relay: which were active lately. Keeps the two
/// tenants that were active last (distinct), which is enough to tell any
/// tenant whether another one was active within [`ACTIVE_WINDOW`]: the
/// last other than itself is one of the two.
pub struct Tenants {
    next_id: AtomicU64,
    last: Mutex<[Option<(u64, Instant)>; 2]>,
    /// Whether shares keep a turn back (off only to measure without).
    keep: bool,
}

impl Tenants {
    pub fn new() -> Arc<Tenants> {
        Tenants::keeping(true)
    }

    /// Tenants whose shares keep a turn back for each other, or not
    /// (`false`: every share always has all its turns, to compare).
    pub fn keeping(keep: bool) -> Arc<Tenants> {
        Arc::new(Tenants {
            next_id: AtomicU64::new(0),
            last: Mutex::new([None, None]),
            keep,
        })
    }

    /// A new tenant's share of `turns` turns; `trace` records its
    /// messages' delay through the relay (a benchmark's probe).
    pub fn share(self: &Arc<Self>, turns: usize, trace: Option<Trace>) -> Share {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Share::make(turns, Some(self.clone()), id, trace)
    }

    fn mark(&self, id: u64, now: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last[0] {
            Some((first, _)) if first == id => last[0] = Some((id, now)),
            _ => {
                last[1] = last[0];
                last[0] = Some((id, now));
            }
        }
    }

    /// Whether a tenant other than `id` was active within [`ACTIVE_WINDOW`]
    /// before `now`.
    pub fn others_active(&self, id: u64, now: Instant) -> bool {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.iter()
            .flatten()
            .any(|&(other, at)| other != id && now.saturating_duration_since(at) < ACTIVE_WINDOW)
    }
}

/// A tenant's messages timed through the relay, for a benchmark: from the
/// moment one of its connections woke to read a message to the moment
/// another of its connections wrote (a message crossing the relay, when
/// the tenant has one message in flight at a time, like a round-trip
/// probe). The two ends are noted by different tasks, in either order.
pub struct Trace {
    /// The last read and the last write not paired yet: (connection, time).
    ends: Mutex<[Option<(u64, Instant)>; 2]>,
    record: Box<dyn Fn(Duration) + Send + Sync>,
}

impl Trace {
    pub fn new(record: impl Fn(Duration) + Send + Sync + 'static) -> Trace {
        Trace {
            ends: Mutex::new([None, None]),
            record: Box::new(record),
        }
    }

    /// Connection `conn` read bytes, having woken at `at`.
    pub fn read(&self, conn: u64, at: Instant) {
        self.note(0, conn, at);
    }

    /// Connection `conn` wrote bytes at `at`.
    pub fn wrote(&self, conn: u64, at: Instant) {
        self.note(1, conn, at);
    }

    fn note(&self, end: usize, conn: u64, at: Instant) {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        ends[end] = Some((conn, at));
        let [Some((from, t_in)), Some((to, t_out))] = *ends else {
            return;
        };
        if t_out < t_in {
            // A write from before this read: not its message.
            ends[1] = None;
            return;
        }
        if from == to {
            return;
        }
        *ends = [None, None];
        drop(ends);
        (self.record)(t_out - t_in);
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

    #[tokio::test(start_paused = true)]
    async fn tenants_tell_whether_another_was_active_within_the_window() {
        let t = Tenants::new();
        let t0 = Instant::now();
        assert!(!t.others_active(1, t0), "nobody was active");
        t.mark(1, t0);
        assert!(!t.others_active(1, t0), "only itself");
        assert!(t.others_active(2, t0));
        // 1 keeps marking; 2 and 3 once each: each still sees another.
        t.mark(2, t0);
        t.mark(3, t0);
        t.mark(1, t0 + Duration::from_millis(5));
        t.mark(1, t0 + Duration::from_millis(10));
        for id in [1, 2, 3] {
            assert!(t.others_active(id, t0 + Duration::from_millis(10)), "{id}");
        }
        // 3 was the last other than 1: 1 sees it until the window ends.
        let end = t0 + ACTIVE_WINDOW;
        assert!(t.others_active(1, end - Duration::from_millis(1)));
        assert!(!t.others_active(1, end), "3 is quiet for a whole window");
        assert!(t.others_active(3, end), "1 marked later");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_keeps_a_turn_back_while_another_is_active_and_alone_gets_it_back() {
        let t = Tenants::new();
        let bulk = t.share(2, None);
        let other = t.share(2, None);
        // Alone (its own marks do not count), both turns.
        bulk.active(Instant::now());
        let (a, b) = (bulk.turn().await, bulk.turn().await);
        assert_eq!((bulk.held(), bulk.limit(), bulk.kept_back()), (2, 2, 0));
        drop((a, b));
        // Another tenant moves something: the next turn keeps one back.
        other.active(Instant::now());
        let a = bulk.turn().await;
        assert_eq!((bulk.held(), bulk.limit(), bulk.kept_back()), (1, 1, 1));
        assert!(
            bulk.try_turn().is_none(),
            "one turn while another is active"
        );
        assert_eq!(other.limit(), 2, "the quiet one keeps nothing back");
        drop(a);
        // The other is quiet for a whole window: the kept turn comes back.
        tokio::time::advance(ACTIVE_WINDOW).await;
        let a = bulk.try_turn().expect("a free turn");
        let b = bulk.try_turn().expect("the kept one, given back");
        assert_eq!((bulk.held(), bulk.limit(), bulk.kept_back()), (2, 2, 1));
        drop((a, b));
    }

    #[tokio::test(start_paused = true)]
    async fn tenants_that_do_not_keep_give_every_turn_while_another_is_active() {
        let t = Tenants::keeping(false);
        let (bulk, other) = (t.share(2, None), t.share(2, None));
        other.active(Instant::now());
        assert!(t.others_active(bulk.0.id, Instant::now()));
        let (a, b) = (bulk.turn().await, bulk.turn().await);
        assert_eq!((bulk.held(), bulk.limit(), bulk.kept_back()), (2, 2, 0));
        drop((a, b));
    }

    /// While every turn is held, the first to queue for one queues for the
    /// turn to keep back first: when the running slices end, one turn is
    /// kept and the other goes to the next in the queue; the first then
    /// queues behind it for its own.
    #[tokio::test(start_paused = true)]
    async fn keeping_a_turn_back_queues_behind_the_running_slices() {
        let t = Tenants::new();
        let bulk = t.share(2, None);
        let other = t.share(1, None);
        let held = vec![bulk.turn().await, bulk.turn().await];
        other.active(Instant::now());
        let (b1, b2) = (bulk.clone(), bulk.clone());
        let first = tokio::spawn(async move { b1.turn().await });
        while !bulk.0.keeping.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn(async move { b2.turn().await });
        while bulk.counts().1 < 1 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let turn = second.await.unwrap();
        assert_eq!((bulk.held(), bulk.limit(), bulk.kept_back()), (1, 1, 1));
        while bulk.counts().1 < 2 {
            tokio::task::yield_now().await;
        }
        assert!(!first.is_finished(), "the first waits for the one turn");
        drop(turn);
        let turn = first.await.unwrap();
        assert_eq!((bulk.held(), bulk.limit()), (1, 1));
        drop(turn);
        assert!(!bulk.0.keeping.load(Ordering::Acquire));
    }

    #[test]
    fn a_trace_pairs_a_read_with_the_next_write_of_another_connection() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let trace = Trace::new(move |d| g.lock().unwrap().push(d.as_micros()));
        let t0 = Instant::now();
        let at = |us| t0 + Duration::from_micros(us);
        // Read on 1, its own write (a window adjust), then 2 writes it out.
        trace.read(1, at(0));
        trace.wrote(1, at(5));
        trace.wrote(2, at(40));
        // The answer: 2 wrote before 1 noted its read (other task first).
        trace.wrote(1, at(130));
        trace.read(2, at(100));
        // A write from before a read is not its message.
        trace.wrote(2, at(150));
        trace.read(1, at(200));
        trace.wrote(2, at(260));
        assert_eq!(*got.lock().unwrap(), vec![40, 30, 60]);
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
