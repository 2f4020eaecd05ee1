//! A connection's slices of work and its turns in its tenant's fair share
//! ([`crate::ssh::fair`]).
//!
//! Every [`CONNECTION_SLICE_BYTES`] moved, the task lets other tasks run.
//! Once the application gave the connection a share, a connection that
//! moved a slice within the last [`BULK_HOLD`] counts as bulk: it queues
//! for a turn at each slice boundary and after each wait, and gives the
//! turn back at the next boundary or when it has nothing to do. Other
//! connections (interactive ones, and any before login) never queue.
//!
//! While another tenant is active, a bulk connection's work with a turn
//! runs at a lower thread priority ([`crate::ssh::nice`]): from the start
//! of a round of work ([`Slices::before_work`]) to its end
//! ([`Slices::after_work`]), and never across a wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio::time::Instant;

use crate::protocol::limits::{BULK_HOLD, CONNECTION_SLICE_BYTES};
use crate::ssh::fair::{ACTIVE_MARK_EVERY, Share, Turn};
use crate::ssh::nice;
use crate::ssh::proto::mux::counts;

#[derive(Default)]
pub(super) struct Slices {
    /// Bytes moved (read and written) at the last slice boundary.
    mark: u64,
    /// Bulk until then (a slice ended within [`BULK_HOLD`] before it).
    bulk_until: Option<Instant>,
    turn: Option<Turn>,
    /// Whether another tenant was active when the turn was taken: the
    /// work with it then runs at a lower priority.
    lower: bool,
    /// When this connection last marked its tenant active.
    marked: Option<Instant>,
    /// The thread's data packet count when the round of work began.
    data_at: u64,
    /// Bytes read and written when last traced, and the connection's
    /// number in its tenant's trace (only for a traced tenant).
    traced: (u64, u64, u64),
}

/// Numbers the connections of a traced tenant.
static TRACED: AtomicU64 = AtomicU64::new(0);

impl Slices {
    /// Runs `f`; if it has to wait (for the socket, a command, or anything
    /// an application callback waits on), the turn goes to the next first:
    /// a turn is held only while working, never while waiting.
    /// `f` comes pinned by the caller, so that the future is stored once
    /// in the connection task's state, not twice (size_tests).
    pub(super) async fn unless_waiting<F: Future>(&mut self, mut f: Pin<&mut F>) -> F::Output {
        if self.turn.is_some() {
            if let Some(v) = poll_once(&mut f).await {
                return v;
            }
            self.turn = None;
        }
        nice::restore();
        f.await
    }

    /// Before working: a bulk connection without a turn queues for one.
    pub(super) async fn before_work(&mut self, share: Option<&Share>) {
        let Some(share) = share else {
            return;
        };
        self.data_at = counts::packets_here();
        let now = Instant::now();
        if self.turn.is_none() {
            let Some(until) = self.bulk_until else {
                return;
            };
            if now >= until {
                self.bulk_until = None;
                return;
            }
            self.took(share.turn().await, share);
        }
        if self.lower {
            nice::lower();
        }
    }

    /// Marks the tenant active (at most once per [`ACTIVE_MARK_EVERY`]) if
    /// the round of work that just ended moved channel data: keepalives,
    /// logins and channels opened without data do not count. (A round that
    /// waited may have ended on another thread; its reading then differs
    /// and counts, as every round did before.)
    fn mark_active(&mut self, share: Option<&Share>) {
        let Some(share) = share else {
            return;
        };
        if counts::packets_here() == self.data_at {
            return;
        }
        let now = Instant::now();
        if self.marked.is_none_or(|m| now >= m + ACTIVE_MARK_EVERY) {
            self.marked = Some(now);
            share.active(now);
        }
    }

    fn took(&mut self, turn: Turn, share: &Share) {
        self.turn = Some(turn);
        self.lower = nice::step() > 0 && share.others_active(Instant::now());
    }

    /// After working, with `moved` bytes moved in all: at a slice
    /// boundary, gives the turn back, lets others run, and queues again.
    pub(super) async fn after_work(&mut self, moved: u64, share: Option<&Share>) {
        nice::restore();
        self.mark_active(share);
        if moved - self.mark < CONNECTION_SLICE_BYTES {
            return;
        }
        self.mark = moved;
        self.turn = None;
        let Some(share) = share else {
            tokio::task::yield_now().await;
            return;
        };
        self.bulk_until = Some(Instant::now() + BULK_HOLD);
        match share.try_turn() {
            // Nobody of this tenant waits: still let other tenants run.
            Some(t) => {
                self.took(t, share);
                tokio::task::yield_now().await;
            }
            None => {
                let t = share.turn().await;
                self.took(t, share);
            }
        }
    }
}

impl Drop for Slices {
    /// A loop that ends with an error between its work's start and end
    /// leaves no lowered thread behind (it ends in the same poll).
    fn drop(&mut self) {
        nice::restore();
    }
}

impl Slices {
    /// For a traced tenant ([`crate::ssh::fair::Trace`]): the time the
    /// loop woke, before it reads anything.
    pub(super) fn woke(share: Option<&Share>) -> Option<Instant> {
        share.and_then(Share::trace).map(|_| Instant::now())
    }

    /// For a traced tenant: notes that this connection read bytes since it
    /// `woke`, or wrote bytes (`read`, `written`: its totals).
    pub(super) fn trace(
        &mut self,
        share: Option<&Share>,
        woke: Option<Instant>,
        read: u64,
        written: u64,
    ) {
        let (Some(trace), Some(woke)) = (share.and_then(Share::trace), woke) else {
            return;
        };
        let (r, w, mut id) = self.traced;
        if id == 0 {
            id = TRACED.fetch_add(1, Ordering::Relaxed) + 1;
        }
        // First what went out (a message another connection read before),
        // then what came in.
        if written > w {
            trace.wrote(id, Instant::now());
        }
        if read > r {
            trace.read(id, woke);
        }
        self.traced = (read, written, id);
    }
}

/// Polls `f` once: its output if it is ready now.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::ssh::fair::Tenants;

    /// A round of bulk work runs lowered while another tenant is active,
    /// and the thread is back at its own priority before the task waits
    /// and at the end of the round.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lowered_round_ends_before_any_wait() {
        nice::set(3).expect("the tests run as root");
        let tenants = Tenants::new();
        let bulk = tenants.share(2, None);
        let other = tenants.share(2, None);
        let mut s = Slices::default();
        s.bulk_until = Some(Instant::now() + BULK_HOLD);
        // Alone: a turn, not lowered.
        s.before_work(Some(&bulk)).await;
        assert!(s.turn.is_some());
        assert!(!nice::lowered());
        s.after_work(0, Some(&bulk)).await;
        // Another tenant active: the next turn's round runs lowered.
        other.active(Instant::now());
        s.turn = None;
        s.before_work(Some(&bulk)).await;
        assert!(nice::lowered());
        // Work that has to wait: its first poll runs lowered, the rest not.
        let mut seen = Vec::new();
        {
            let work = std::pin::pin!(std::future::poll_fn(|cx| {
                seen.push(nice::lowered());
                if seen.len() == 1 {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            }));
            s.unless_waiting(work).await;
        }
        assert_eq!(seen, [true, false]);
        assert!(s.turn.is_none(), "the turn went back before the wait");
        // A round that ends without waiting ends lowered until after_work.
        s.turn = None;
        s.before_work(Some(&bulk)).await;
        assert!(nice::lowered());
        s.after_work(0, Some(&bulk)).await;
        assert!(!nice::lowered());
        // An ending loop drops its slices lowered: the drop sets it back.
        s.before_work(Some(&bulk)).await;
        assert!(nice::lowered());
        drop(s);
        assert!(!nice::lowered());
        nice::set(0).unwrap();
    }
}
