//! The direct path of a splice: data that arrives on a channel spliced to
//! another goes straight into the other connection's command queue from
//! the connection task that opened it, when nothing of that channel waits
//! (its queue is empty and its pump waits in [`ChanHandle::recv`]), the
//! other channel has window and its connection room in its outbox, and
//! the pace (if any) does not hold it. A small message then wakes one task
//! on its way through a relay instead of two (the pump's task is skipped).
//! Whenever one of these does not hold, the data is queued as before and
//! the pump passes it on, so bytes keep their order and back-pressure
//! stays with the pump. The packets one read brings wake the other
//! connection's task once ([`Wakes`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::queue::CmdTx;
use super::{ChanHandle, ChanShared, Chunk, Cmd, ConnTx, GRANT_AT, In, SEND_PACKET};

/// A wait the pace asks for before data is passed on.
pub type PaceHold = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Charges `n` bytes to a splice direction's pace: `Some` to hold them.
pub type Charge = Box<dyn Fn(usize) -> Option<PaceHold> + Send + Sync>;

/// Where a spliced channel's data may go directly.
pub struct Direct {
    id: u32,
    to: Arc<ChanShared>,
    tx: ConnTx,
    /// Bytes that went the direct way (the splice adds them to its counts).
    pub moved: Arc<AtomicU64>,
    charge: Option<Charge>,
}

/// What [`ChanShared::push_data`] did with the data.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the channel's reader.
    Queued,
    /// Passed on directly; `Some(n)`: grant the peer `n` bytes of window now.
    Direct(Option<u32>),
}

impl ChanHandle {
    /// From now on, data arriving on this channel may go directly to
    /// `to` (see the module doc); `charge` paces it. Returns the count of
    /// bytes that go that way.
    pub fn direct_to(&self, to: &ChanHandle, charge: Option<Charge>) -> Arc<AtomicU64> {
        let moved = Arc::new(AtomicU64::new(0));
        let d = Direct {
            id: to.id,
            to: to.shared.clone(),
            tx: to.tx.clone(),
            moved: moved.clone(),
            charge,
        };
        self.shared.lock().direct = Some(Arc::new(d));
        moved
    }

    /// Ends the direct path: everything goes through the queue again.
    pub fn no_direct(&self) {
        self.shared.lock().direct = None;
    }

    /// The pace's wait for the data just taken, if the direct path already
    /// charged it (so the pump must not charge it again).
    pub fn take_pace_hold(&self) -> Option<PaceHold> {
        self.shared.lock().pace_hold.take()
    }
}

/// The wake-up owed to the connection that data was last passed to
/// directly (its command queue, [`CmdTx::send_quiet`]): the packets one read
/// brought for the same connection wake its task once, when the reading
/// connection has handled them all ([`Wakes::flush`]), or when data goes to
/// another connection; dropping it wakes too. Nothing waits for more data:
/// the wake comes before the reading task does anything else.
#[derive(Default)]
pub struct Wakes(Option<CmdTx>);

impl Wakes {
    fn owe(&mut self, tx: &CmdTx) {
        match &self.0 {
            Some(owed) if owed.same_queue(tx) => {}
            _ => {
                self.flush();
                self.0 = Some(tx.clone());
            }
        }
    }

    /// Wakes the connection owed a wake-up, if any.
    pub fn flush(&mut self) {
        if let Some(tx) = self.0.take() {
            tx.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.flush();
    }
}

impl ChanShared {
    /// Connection side: channel data arrived. Passed on directly when it
    /// may be (see the module doc), queued for the reader otherwise.
    pub fn push_data(&self, data: Chunk) -> Pushed {
        self.push_data_waking(data, &mut Wakes::default())
    }

    /// Like [`ChanShared::push_data`]; data passed on directly leaves its
    /// connection's wake-up to `wakes`.
    pub fn push_data_waking(&self, data: Chunk, wakes: &mut Wakes) -> Pushed {
        let direct = {
            let st = self.lock();
            match &st.direct {
                Some(d) if st.reader_waiting && st.queue.is_empty() && !st.closed => d.clone(),
                _ => {
                    drop(st);
                    self.push(In::Data(data));
                    return Pushed::Queued;
                }
            }
        };
        let n = data.len();
        match direct.pass(data, wakes) {
            Ok(()) => {
                direct.moved.fetch_add(n as u64, Ordering::Relaxed);
                let mut st = self.lock();
                st.consumed += n as u32;
                let grant = (st.consumed >= GRANT_AT && !st.closed)
                    .then(|| std::mem::take(&mut st.consumed));
                Pushed::Direct(grant)
            }
            Err((data, hold)) => {
                self.lock().pace_hold = hold;
                self.push(In::Data(data));
                Pushed::Queued
            }
        }
    }
}

impl Direct {
    /// Takes the other channel's window and its connection's outbox space
    /// for `data`, and the pace's leave, and queues it there; hands it
    /// back (with the pace's wait, when that held it) otherwise.
    fn pass(&self, data: Chunk, wakes: &mut Wakes) -> Result<(), (Chunk, Option<PaceHold>)> {
        let n = data.len();
        if n == 0 || n > SEND_PACKET as usize {
            return Err((data, None));
        }
        let n32 = n as u32;
        {
            let mut st = self.to.lock();
            if st.closed || st.remote_window < n32 || st.remote_max.max(1) < n32 {
                return Err((data, None));
            }
            st.remote_window -= n32;
        }
        match self.tx.space.try_acquire_many(n32) {
            Ok(permit) => permit.forget(),
            Err(_) => {
                self.give_back(n32, false);
                return Err((data, None));
            }
        }
        if let Some(hold) = self.charge.as_ref().and_then(|c| c(n)) {
            self.give_back(n32, true);
            return Err((data, Some(hold)));
        }
        // A connection that is gone ends the splice too: its channel is
        // closed, and the other direction's pump sees it.
        let queued = self.tx.cmds.send_quiet(Cmd::Data {
            id: self.id,
            ext: false,
            data,
        });
        if queued.is_ok() {
            wakes.owe(&self.tx.cmds);
        }
        Ok(())
    }

    fn give_back(&self, n: u32, space: bool) {
        let mut st = self.to.lock();
        st.remote_window = st.remote_window.saturating_add(n);
        drop(st);
        if space {
            self.tx.space.add_permits(n as usize);
        }
    }
}
