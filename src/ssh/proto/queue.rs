//! The queue of commands into one connection's task ([`Cmd`]s from its
//! channels and owners).
//!
//! Every connection has one, and most connections of a relay are idle
//! devices that never see a command for hours. An unbounded tokio channel
//! allocates its first block of 32 slots (about 2.5 KiB with its shared
//! state) when it is made; this queue allocates nothing until the first
//! command and gives its slots back ([`CmdRx::release_if_empty`]) once it has
//! drained, so an idle connection holds only the shared header.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::mux::{Chunk, Cmd};

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the receiver; a permit is stored if it is not waiting.
    ready: Notify,
}

struct Inner {
    queue: VecDeque<Cmd>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock, so a poisoned lock still
        // holds a consistent queue.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side; clones share one queue.
#[derive(Clone)]
pub struct CmdTx(Arc<Shared>);

/// The connection task's side.
pub struct CmdRx(Arc<Shared>);

/// The queue is empty right now (see [`CmdRx::try_recv`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

/// An empty queue and its two ends.
pub fn channel() -> (CmdTx, CmdRx) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
    });
    (CmdTx(shared.clone()), CmdRx(shared))
}

impl CmdTx {
    /// Queues `c`; gives it back if the connection has ended.
    pub fn send(&self, c: Cmd) -> Result<(), Cmd> {
        {
            let mut inner = self.0.lock();
            if inner.closed {
                return Err(c);
            }
            inner.queue.push_back(c);
        }
        self.0.ready.notify_one();
        Ok(())
    }

    /// Queues `c` without waking the receiver: the caller owes it a
    /// [`CmdTx::wake`] (see [`super::mux::Wakes`]), so that commands queued
    /// in a row cost one wake-up.
    pub fn send_quiet(&self, c: Cmd) -> Result<(), Cmd> {
        let mut inner = self.0.lock();
        if inner.closed {
            return Err(c);
        }
        inner.queue.push_back(c);
        Ok(())
    }

    /// Wakes the receiver for what [`CmdTx::send_quiet`] queued.
    pub fn wake(&self) {
        self.0.ready.notify_one();
    }

    /// Whether both ends lead to the same queue.
    pub fn same_queue(&self, other: &CmdTx) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl CmdRx {
    /// The oldest command, waiting for one; `None` once closed. Cancel safe:
    /// a command is taken only when the call returns it.
    pub async fn recv(&mut self) -> Option<Cmd> {
        loop {
            {
                let mut inner = self.0.lock();
                if let Some(c) = inner.queue.pop_front() {
                    return Some(c);
                }
                if inner.closed {
                    return None;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// The oldest command, without waiting.
    pub fn try_recv(&mut self) -> Result<Cmd, Empty> {
        self.0.lock().queue.pop_front().ok_or(Empty)
    }

    /// The oldest command if it is channel data for channel `id` (extended
    /// or not, as `ext` says) of at most `room` bytes; never waits.
    pub fn try_recv_data(&mut self, id: u32, ext: bool, room: usize) -> Option<Chunk> {
        let mut inner = self.0.lock();
        match inner.queue.front() {
            Some(Cmd::Data {
                id: i,
                ext: e,
                data,
            }) if *i == id && *e == ext && data.len() <= room => {}
            _ => return None,
        }
        match inner.queue.pop_front() {
            Some(Cmd::Data { data, .. }) => Some(data),
            _ => None,
        }
    }

    /// Refuses further commands and drops the queued ones.
    pub fn close(&mut self) {
        let dropped = {
            let mut inner = self.0.lock();
            inner.closed = true;
            std::mem::take(&mut inner.queue)
        };
        // Dropped outside the lock: a command may own a reply channel
        // whose drop wakes another task.
        drop(dropped);
    }

    /// Whether the queue holds slots that [`CmdRx::release_if_empty`]
    /// could give back.
    pub fn holds_slots(&self) -> bool {
        self.0.lock().queue.capacity() > 0
    }

    /// Gives the slots back if nothing is queued.
    pub fn release_if_empty(&mut self) {
        let mut inner = self.0.lock();
        if inner.queue.is_empty() && inner.queue.capacity() > 0 {
            inner.queue = VecDeque::new();
        }
    }
}

impl Drop for CmdRx {
    /// A connection task that ends without [`CmdRx::close`] (a panic, an
    /// abort) still refuses further commands, and the queued ones' reply
    /// channels drop, so whoever waits on them hears the connection closed.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eof(id: u32) -> Cmd {
        Cmd::Eof(id)
    }

    fn id(c: Cmd) -> u32 {
        match c {
            Cmd::Eof(id) => id,
            _ => panic!("expected Eof"),
        }
    }

    #[test]
    fn an_empty_queue_allocates_no_slots() {
        let (tx, mut rx) = channel();
        assert!(!rx.holds_slots());
        assert!(tx.send(eof(1)).is_ok());
        assert!(rx.holds_slots());
        assert_eq!(rx.try_recv().map(id), Ok(1));
        assert!(rx.holds_slots(), "slots stay until released");
        rx.release_if_empty();
        assert!(!rx.holds_slots());
    }

    #[test]
    fn release_keeps_queued_commands() {
        let (tx, mut rx) = channel();
        for i in 0..10 {
            assert!(tx.send(eof(i)).is_ok());
        }
        rx.release_if_empty();
        let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).map(id).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(rx.try_recv().map(id), Err(Empty));
    }

    #[test]
    fn a_closed_queue_refuses_and_drops() {
        let (tx, mut rx) = channel();
        assert!(tx.send(eof(1)).is_ok());
        rx.close();
        assert!(matches!(tx.send(eof(2)), Err(Cmd::Eof(2))));
        assert_eq!(rx.try_recv().map(id), Err(Empty));
        assert!(!rx.holds_slots());
    }

    #[tokio::test]
    async fn a_dropped_receiver_refuses_and_answers_waiting_openers() {
        let (tx, rx) = channel();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let open = Cmd::Open {
            kind: "session",
            extra: Vec::new(),
            max_packet: 32768,
            reply,
        };
        assert!(tx.send(open).is_ok());
        drop(rx);
        assert!(
            answer.await.is_err(),
            "the queued reply channel was dropped"
        );
        assert!(tx.send(eof(1)).is_err());
    }

    #[tokio::test]
    async fn recv_waits_for_a_sender_on_another_task_in_order() {
        let (tx, mut rx) = channel();
        let sender = tokio::spawn(async move {
            for i in 0..1000 {
                assert!(tx.send(eof(i)).is_ok());
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            tx
        });
        for want in 0..1000 {
            assert_eq!(rx.recv().await.map(id), Some(want));
        }
        let _tx = sender.await.unwrap();
        rx.close();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = channel();
        // A recv dropped while waiting, as a `select!` does.
        tokio::select! {
            _ = rx.recv() => panic!("nothing was sent"),
            _ = tokio::task::yield_now() => {}
        }
        assert!(tx.send(eof(5)).is_ok());
        assert_eq!(rx.recv().await.map(id), Some(5));
    }
}
