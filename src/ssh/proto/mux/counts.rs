//! Channel data packets and their bytes, received and sent by every
//! connection of this process: `/metrics` shows them, and the data path
//! benchmark reads them to find packets per GiB on each leg of a relay
//! (one relaxed add per packet, beside sealing or opening it).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static PACKETS_IN: AtomicU64 = AtomicU64::new(0);
static BYTES_IN: AtomicU64 = AtomicU64::new(0);
static PACKETS_OUT: AtomicU64 = AtomicU64::new(0);
static BYTES_OUT: AtomicU64 = AtomicU64::new(0);

/// Totals since the process started (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataCounts {
    /// CHANNEL_DATA and CHANNEL_EXTENDED_DATA packets received.
    pub packets_in: u64,
    /// Their data bytes.
    pub bytes_in: u64,
    /// Data packets sealed to be sent.
    pub packets_out: u64,
    /// Their data bytes.
    pub bytes_out: u64,
}

thread_local! {
    /// Data packets received or sealed on this thread (see [`packets_here`]).
    static HERE: Cell<u64> = const { Cell::new(0) };
}

/// Data packets received or sealed on the calling thread so far: a
/// connection's task compares two readings to tell whether a round of its
/// work moved channel data, or only keepalives, logins and other control
/// messages.
pub(crate) fn packets_here() -> u64 {
    HERE.get()
}

/// The totals now.
pub fn data_counts() -> DataCounts {
    DataCounts {
        packets_in: PACKETS_IN.load(Ordering::Relaxed),
        bytes_in: BYTES_IN.load(Ordering::Relaxed),
        packets_out: PACKETS_OUT.load(Ordering::Relaxed),
        bytes_out: BYTES_OUT.load(Ordering::Relaxed),
    }
}

/// A data packet of `len` bytes arrived.
pub(crate) fn count_in(len: usize) {
    HERE.set(HERE.get().wrapping_add(1));
    PACKETS_IN.fetch_add(1, Ordering::Relaxed);
    BYTES_IN.fetch_add(len as u64, Ordering::Relaxed);
}

/// A data packet of `len` bytes was sealed.
pub(crate) fn count_out(len: usize) {
    HERE.set(HERE.get().wrapping_add(1));
    PACKETS_OUT.fetch_add(1, Ordering::Relaxed);
    BYTES_OUT.fetch_add(len as u64, Ordering::Relaxed);
}
