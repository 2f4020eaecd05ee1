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
//!
//! A channel spliced to a byte stream that can be written without waiting
//! (a TCP socket: [`DirectSink`]) has a direct path too: under the same
//! conditions the connection task writes the data to the socket itself,
//! and the splice's task is not woken. What the socket does not take at
//! once is queued for the splice (which is woken for it), behind nothing,
//! so order holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::super::queue::CmdTx;
use super::{ChanHandle, ChanShared, Chunk, Cmd, ConnTx, GRANT_AT, In, SEND_PACKET};

/// A wait the pace asks for before data is passed on.
pub type PaceHold = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Charges `n` bytes to a splice direction's pace: `Some` to hold them.
pub type Charge = Box<dyn Fn(usize) -> Option<PaceHold> + Send + Sync>;

/// A byte stream a spliced channel's data may be written to directly.
pub trait DirectSink: Send + Sync {
    /// Writes what fits of `data` now, never waiting: `WouldBlock` when
    /// nothing does.
    fn try_write(&self, data: &[u8]) -> std::io::Result<usize>;
}

/// Where a spliced channel's data may go directly.
pub struct Direct {
    to: Dest,
    /// Bytes that went the direct way (the splice adds them to its counts).
    pub moved: Arc<AtomicU64>,
}

enum Dest {
    /// Another channel, through its connection's command queue.
    Channel {
        id: u32,
        to: Arc<ChanShared>,
        tx: ConnTx,
        charge: Option<Charge>,
    },
    /// A byte stream's socket.
    Sink(Arc<dyn DirectSink>),
}

/// What passing data on directly did with it.
enum Passed {
    /// All of it went: this many bytes.
    All(usize),
    /// The first `.0` bytes went; the rest is to be queued.
    Part(usize, Chunk),
    /// Nothing went (with the pace's wait, when that held it).
    Back(Chunk, Option<PaceHold>),
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
        self.direct(Dest::Channel {
            id: to.id,
            to: to.shared.clone(),
            tx: to.tx.clone(),
            charge,
        })
    }

    /// From now on, data arriving on this channel may be written straight
    /// to `sink` (see the module doc). Returns the count of bytes that go
    /// that way.
    pub fn direct_to_sink(&self, sink: Arc<dyn DirectSink>) -> Arc<AtomicU64> {
        self.direct(Dest::Sink(sink))
    }

    fn direct(&self, to: Dest) -> Arc<AtomicU64> {
        let moved = Arc::new(AtomicU64::new(0));
        let d = Direct {
            to,
            moved: moved.clone(),
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
        let st = self.lock();
        let direct = match &st.direct {
            Some(d)
                if st.reader_waiting && st.queue.is_empty() && !st.closed && !data.is_empty() =>
            {
                d.clone()
            }
            _ => {
                drop(st);
                self.push(In::Data(data));
                return Pushed::Queued;
            }
        };
        let (mut st, passed) = match &direct.to {
            // Written under this channel's lock: once `no_direct` returns,
            // nothing more reaches the socket and the count is final.
            Dest::Sink(sink) => (st, to_sink(sink.as_ref(), data)),
            // Not under it: passing on takes the other channel's lock.
            Dest::Channel { id, to, tx, charge } => {
                drop(st);
                let passed = to_channel(*id, to, tx, charge.as_ref(), data, wakes);
                (self.lock(), passed)
            }
        };
        let (n, rest) = match passed {
            Passed::All(n) => (n, None),
            Passed::Part(n, rest) => (n, Some(rest)),
            Passed::Back(data, hold) => {
                st.pace_hold = hold;
                drop(st);
                self.push(In::Data(data));
                return Pushed::Queued;
            }
        };
        direct.moved.fetch_add(n as u64, Ordering::Relaxed);
        st.consumed += n as u32;
        let grant =
            (st.consumed >= GRANT_AT && !st.closed).then(|| std::mem::take(&mut st.consumed));
        drop(st);
        if let Some(rest) = rest {
            self.push(In::Data(rest));
        }
        Pushed::Direct(grant)
    }
}

/// Takes the other channel's window and its connection's outbox space for
/// `data`, and the pace's leave, and queues it there; hands it back (with
/// the pace's wait, when that held it) otherwise.
fn to_channel(
    id: u32,
    to: &ChanShared,
    tx: &ConnTx,
    charge: Option<&Charge>,
    data: Chunk,
    wakes: &mut Wakes,
) -> Passed {
    let n = data.len();
    if n > SEND_PACKET as usize {
        return Passed::Back(data, None);
    }
    let n32 = n as u32;
    {
        let mut st = to.lock();
        if st.closed || st.remote_window < n32 || st.remote_max.max(1) < n32 {
            return Passed::Back(data, None);
        }
        st.remote_window -= n32;
    }
    let give_back = |space: bool| {
        let mut st = to.lock();
        st.remote_window = st.remote_window.saturating_add(n32);
        drop(st);
        if space {
            tx.space.add_permits(n);
        }
    };
    match tx.space.try_acquire_many(n32) {
        Ok(permit) => permit.forget(),
        Err(_) => {
            give_back(false);
            return Passed::Back(data, None);
        }
    }
    if let Some(hold) = charge.and_then(|c| c(n)) {
        give_back(true);
        return Passed::Back(data, Some(hold));
    }
    // A connection that is gone ends the splice too: its channel is
    // closed, and the other direction's pump sees it.
    let queued = tx.cmds.send_quiet(Cmd::Data {
        id,
        ext: false,
        data,
    });
    if queued.is_ok() {
        wakes.owe(&tx.cmds);
    }
    Passed::All(n)
}

/// Writes `data` to the socket as far as it takes it now. An error is the
/// splice's to see: the data is handed back, and its write fails there.
fn to_sink(sink: &dyn DirectSink, data: Chunk) -> Passed {
    match sink.try_write(&data) {
        Ok(n) if n == data.len() => Passed::All(n),
        Ok(n) if n > 0 => Passed::Part(n, Bytes::copy_from_slice(&data[n..]).into()),
        _ => Passed::Back(data, None),
    }
}
